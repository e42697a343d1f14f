r"""Pictures of a program that takes labels: samples by class, Kingma et al.'s analogies, the confusion matrix.

Each is read from the program's own traces, by site type: the model is run with the label given and its one
latent site (given the label) held at chosen values (``poutine.condition``); the image is the mean of its one
observed site of the data's shape. A program whose model has more than one latent site once the label is given
has no such picture (:func:`class_pictures` says why).

Reference:
    Semi-supervised Learning with Deep Generative Models (Kingma, Rezende, Mohamed & Welling, 2014), figure 1.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.infer.diagnostics import predictions
from pyro_vae.infer.program import latent_sites, traces
from pyro_vae.runs.figures import _AtMeans, _data_mean, _figure, _grid, _save, image_shape
from pyro_vae.training.data import Dataset

__all__ = ["class_pictures", "decode_with_labels", "plot_analogies", "plot_confusion", "plot_samples_by_class"]


def _one_latent_site(program: nn.Module, x: Tensor, y: Tensor) -> str | None:
    """The name of the model's one latent site given the label, or ``None`` where it has none or several."""
    guide_trace, _ = traces(program, x[:2], y[:2])
    sites = latent_sites(guide_trace)
    return sites[0] if len(sites) == 1 else None


@torch.no_grad()
def decode_with_labels(program: nn.Module, x: Tensor, y: Tensor, z: Tensor | None = None) -> Tensor | None:
    """The mean of :math:`p(x\\mid y, z)` for each row of ``y``, at the values ``z`` of the model's one latent site
    (drawn from the model where ``None``); ``x`` gives the shape (its values are not used). ``None`` where the
    model has no single latent site given the label, or no single observed site of ``x``'s shape."""
    name = _one_latent_site(program, x, y)
    if name is None:
        return None
    model = program.model if z is None else poutine.condition(program.model, data={name: z})
    return _data_mean(poutine.trace(model).get_trace(x, y), x)


def _shared_codes(program: nn.Module, x: Tensor, classes: int, columns: int) -> Tensor | None:
    """``columns`` draws of the latent site from the model, each repeated for every class: a column's code."""
    name = _one_latent_site(program, x, torch.zeros(2, dtype=torch.long, device=x.device))
    if name is None:
        return None
    template = x[:1].expand(columns, *x.shape[1:])
    first = torch.zeros(columns, dtype=torch.long, device=x.device)
    z = poutine.trace(program.model).get_trace(template, first).nodes[name]["value"]
    return z.repeat(classes, *[1] * (z.dim() - 1))


def plot_samples_by_class(
    program: nn.Module, x: Tensor, classes: int, path: str | Path, caption: str = "", columns: int = 10
) -> bool:
    """A row per class, a column per draw of the latent code: the same code across a column. ``False`` where
    the data are not images or the program has no single latent site given the label."""
    shape = image_shape(tuple(x.shape[1:]))
    z = None if shape is None else _shared_codes(program, x, classes, columns)
    if z is None:
        return False
    y = torch.arange(classes, device=x.device).repeat_interleave(columns)
    images = decode_with_labels(program, x[:1].expand(len(y), *x.shape[1:]), y, z)
    if images is None:
        return False
    fig = _figure(figsize=(0.7 * columns + 0.6, 0.7 * classes + 0.6))
    ax = fig.subplots()
    ax.imshow(_grid(images, classes, shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([r * (shape[0] + 1) + shape[0] / 2 for r in range(classes)], [str(c) for c in range(classes)])
    ax.set_xticks([])
    ax.set_ylabel("class y")
    ax.set_xlabel("a draw of z from the prior, the same down each column")
    _save(fig, Path(path), "Samples by class: p(x | y, z)", caption)
    return True


@torch.no_grad()
def plot_analogies(
    program: nn.Module, x: Tensor, labels: Tensor, classes: int, path: str | Path, caption: str = "", rows: int = 8
) -> bool:
    """Kingma et al.'s analogies: each row a test image (left), its code z inferred by the guide with its label,
    then decoded with every class. ``False`` as for :func:`plot_samples_by_class`."""
    shape = image_shape(tuple(x.shape[1:]))
    x, labels = x[:rows], labels[:rows]
    name = None if shape is None else _one_latent_site(program, x, labels)
    if name is None:
        return False
    guide_trace = poutine.trace(_AtMeans()(program.guide)).get_trace(x, labels)
    z = guide_trace.nodes[name]["value"]
    y = torch.arange(classes, device=x.device).repeat(len(x))
    z = z.repeat_interleave(classes, dim=0)
    decoded = decode_with_labels(program, x[:1].expand(len(y), *x.shape[1:]), y, z)
    if decoded is None:
        return False
    images = torch.cat([x.unsqueeze(1), decoded.reshape(len(x), classes, *x.shape[1:])], 1)
    fig = _figure(figsize=(0.7 * (classes + 1) + 0.6, 0.7 * len(x) + 0.6))
    ax = fig.subplots()
    ax.imshow(_grid(images.flatten(0, 1), len(x), shape), cmap="gray_r", vmin=0, vmax=1)
    w = shape[1] + 1
    ax.set_xticks([w / 2 - 0.5] + [w * (c + 1) + w / 2 - 0.5 for c in range(classes)], ["test"] + list(range(classes)))
    ax.set_yticks([])
    ax.set_xlabel("the test image, then its code z (guide's mean given its label) decoded with each class y")
    _save(fig, Path(path), "Analogies: style from the test image, class from y", caption)
    return True


def plot_confusion(
    program: nn.Module, x: Tensor, labels: Tensor, classes: int, path: str | Path, caption: str = ""
) -> None:
    """The confusion matrix of the classifier :math:`q(y\\mid x)` (its mode) on ``x``: counts, true class by row."""
    predicted = predictions(program, x)
    counts = torch.zeros(classes, classes, dtype=torch.long)
    counts.index_put_((labels.cpu(), predicted.cpu()), torch.ones_like(labels.cpu()), accumulate=True)
    fig = _figure(figsize=(6.0, 5.2))
    ax = fig.subplots()
    shown = ax.imshow(counts.numpy(), cmap="Blues")
    for (i, j), n in zip(torch.cartesian_prod(torch.arange(classes), torch.arange(classes)).tolist(), counts.flatten()):
        if n:
            dark = n > counts.max() / 2
            ax.text(j, i, str(int(n)), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted: the mode of q(y | x)")
    ax.set_ylabel("true class")
    fig.colorbar(shown, ax=ax, label="test points")
    correct = int(counts.diag().sum())
    title = f"Confusion matrix of q(y | x): {correct} of {len(labels)} correct ({100 * correct / len(labels):.2f}%)"
    _save(fig, Path(path), title, caption)


def class_pictures(program: nn.Module, data: Dataset, out: Path, caption: str) -> tuple[list[str], dict[str, str]]:
    """The pictures of a program that takes labels, written into ``out``: the file names drawn, and those not
    drawn with why."""
    drawn, skipped = [], {}
    x, labels, classes = data.test, data.test_labels, data.num_classes
    if labels is None or classes is None:
        return [], {"samples_by_class.png": "the test set has no labels"}
    pictures = {
        "samples_by_class.png": lambda path: plot_samples_by_class(program, x, classes, path, caption),
        "analogies.png": lambda path: plot_analogies(program, x, labels, classes, path, caption),
    }
    for name, draw in pictures.items():
        if draw(out / name):
            drawn.append(name)
        else:
            skipped[name] = "the data are not images, or the model has more than one latent site given the label"
    if hasattr(program, "classify"):
        plot_confusion(program, x, labels, classes, out / "confusion.png", caption)
        drawn.append("confusion.png")
    return drawn, skipped

"""Pictures of a trained VAE: reconstructions, samples, the latent space, a decoded latent grid, curves.

Figures are plain :class:`matplotlib.figure.Figure` objects, made apart from matplotlib's global
figure manager: drawing needs no display, and neither switches the backend of the user's process
(a notebook keeps its own) nor leaves figures open in it. They are written atomically as PNG.
Each carries a title, and a caption line with the run's configuration.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import runs_as
from pyro_vae.infer.program import (
    batches,
    device_of,
    finite_mean,
    first_points,
    label_use,
    latent_sites,
    traces,
)
from pyro_vae.models.vae import VAE
from pyro_vae.runs.class_plots import class_pictures
from pyro_vae.runs.figures import _AtMeans, _data_mean, _figure, _grid, _save, image_shape
from pyro_vae.training.data import Dataset

__all__ = [
    "draw_pictures",
    "image_shape",
    "plot_reconstructions",
    "plot_samples",
    "plot_latent_space",
    "plot_latent_spaces",
    "plot_manifold",
    "latent_grid",
    "plot_curves",
    "plot_gradient_variance",
    "plot_gradient_snr",
    "plot_collapse",
    "principal_directions",
    "posterior_means",
    "reconstruct",
    "generate",
    "skipped_pictures",
]


@torch.no_grad()
def reconstruct(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor | None:
    """The mean of :math:`p(x \\mid z)` at the guide's means, read from the program's own model trace (``y``: the
    labels of a program that needs them).

    ``None`` where the model has no single observed site of ``x``'s shape.
    """
    if runs_as(vae, VAE):
        return vae.reconstruct(x)
    batch = first_points(vae, x, y, len(x))
    guide_trace = poutine.trace(_AtMeans()(vae.guide)).get_trace(*batch)
    return _data_mean(poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(*batch), x)


@torch.no_grad()
def generate(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor | None:
    """Means of :math:`p(x \\mid z)` for ``len(x)`` draws of the model's latent sites (``x`` gives only the shape;
    ``y``: the labels to generate, for a program that needs them).

    The model runs unconditioned (``poutine.uncondition``); ``None`` as for :func:`reconstruct`.
    """
    if runs_as(vae, VAE):
        return vae.sample(len(x))
    return _data_mean(poutine.trace(poutine.uncondition(vae.model)).get_trace(*first_points(vae, x, y, len(x))), x)


def plot_reconstructions(
    vae: nn.Module, x: Tensor, path: str | Path, caption: str = "", num: int = 10, y: Tensor | None = None
) -> bool:
    """Inputs (top row) above their reconstructions (bottom row), the mean of p(x|z) at the posterior mean.

    Returns ``False`` (and draws nothing) when the data are not images, or the program has no reconstruction.
    """
    shape = image_shape(tuple(x.shape[1:]))
    x, y = x[:num], None if y is None else y[:num]
    reconstruction = None if shape is None else reconstruct(vae, x, y)
    if reconstruction is None:
        return False
    both = torch.cat([x, reconstruction.to(x.dtype)])
    fig = _figure(figsize=(max(4.0, 0.8 * len(x)), 2.4))
    ax = fig.subplots()
    ax.imshow(_grid(both, 2, shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([(shape[0] - 1) / 2, shape[0] + (shape[0] - 1) / 2 + 1], ["input", "reconstruction"])
    ax.set_xticks([])
    _save(fig, Path(path), "Test inputs and their reconstructions", caption)
    return True


def plot_samples(
    vae: nn.Module,
    path: str | Path,
    caption: str = "",
    num: int = 64,
    x: Tensor | None = None,
) -> bool:
    """Means of p(x|z) for ``num`` codes z drawn from the prior, on a square grid.

    A program other than :class:`~pyro_vae.models.vae.VAE` is run unconditioned on data ``x`` of the right
    shape (:func:`generate`). Returns ``False`` (and draws nothing) when the data are not images.
    """
    rows = math.isqrt(num)
    if x is not None:
        x = x[:1].expand(rows * rows, *x.shape[1:])
    shape = image_shape(tuple(vae.event_shape) if x is None else tuple(x.shape[1:]))
    images = None if shape is None else (vae.sample(rows * rows) if x is None else generate(vae, x))
    if images is None:
        return False
    fig = _figure(figsize=(5, 5.4))
    ax = fig.subplots()
    ax.imshow(_grid(images, rows, shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    _save(fig, Path(path), "Samples: decoded z ~ p(z)", caption)
    return True


_ESTIMATOR_STYLES = ("o-", "s--", "^-.", "v:", "D-")  # marker and line of each estimator, in turn


def plot_gradient_variance(result: dict, path: str | Path, caption: str = "") -> None:
    """Log–log plot of the gradient's total variance against the number of particles, per estimator and group.

    ``result["rows"]`` holds one dict per (estimator, number of particles), with keys ``estimator``,
    ``num_particles`` and ``grad_variance`` (group name → total variance, or ``None``). Every estimator
    in the rows gets a line, in the order of its first row.
    """
    title = "Gradient variance of the estimators against the number of particles"
    _plot_against_particles(result, path, caption, "grad_variance", "total variance", title)


def plot_gradient_snr(result: dict, path: str | Path, caption: str = "") -> None:
    """Log–log plot of the gradient's signal-to-noise ratio against the number of particles, with fitted slopes.

    As :func:`plot_gradient_variance`, from each row's ``grad_snr`` (the mean over a group's
    coordinates of |mean| / std); each legend entry gives the least-squares slope of log SNR
    against log K (Rainforth et al., 2018: about -1/2 for IWAE's encoder, +1/2 for its decoder).
    """
    from pyro_vae.infer.compare import snr_slopes

    title = "Gradient signal-to-noise ratio against the number of particles"
    slopes = {g: snr_slopes(result, g) for g in result["rows"][0]["grad_snr"]}
    _plot_against_particles(
        result, path, caption, "grad_snr", "SNR: mean over coordinates of |E g| / std", title, slopes
    )


def _plot_against_particles(
    result: dict, path: str | Path, caption: str, key: str, ylabel: str, title: str, slopes: dict | None = None
) -> None:
    rows = result["rows"]
    groups = [g for g in rows[0][key] if rows[0][key][g] is not None]
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    fig = _figure(figsize=(4.6 * len(groups), 3.8))
    axes = fig.subplots(1, len(groups), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for estimator, style in zip(estimators, itertools.cycle(_ESTIMATOR_STYLES)):
            points = [
                (r["num_particles"], r[key][group]) for r in rows if r["estimator"] == estimator and r[key][group]
            ]
            slope = (slopes or {}).get(group, {}).get(estimator)
            ax.loglog(*zip(*points), style, label=estimator if slope is None else f"{estimator} (slope {slope:+.2f})")
        ax.set_title(f"{group} gradient")
        ax.set_xlabel("particles K")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    _save(fig, Path(path), title, caption)


_CURVE_LABELS = {"train_elbo": "train (training objective)", "test_elbo": "test"}
_ESTIMATOR_CURVE = "test_elbo_"  # prefix of the test ELBO by one named estimator: test_elbo_<name>
#: Histories shorter than this get a marker on every epoch (a line of one point is invisible).
_MARKED_EPOCHS = 30


def _curve_label(key: str) -> str:
    """The legend's name for a metric of a history.

    >>> _curve_label("train_elbo"), _curve_label("test_elbo_iwae")
    ('train (training objective)', 'test, iwae estimator')
    """
    if key in _CURVE_LABELS:
        return _CURVE_LABELS[key]
    if key.startswith(_ESTIMATOR_CURVE):
        return f"test, {key.removeprefix(_ESTIMATOR_CURVE)} estimator"
    return key


def _curve_keys(history: list[dict]) -> tuple[str, ...]:
    """The metrics to plot: the training objective, then the test ELBO of every estimator logged at every epoch.

    Runs written before each estimator was logged apart have a single ``test_elbo``.

    >>> _curve_keys([{"train_elbo": -9.0, "test_elbo": -9.5, "test_elbo_a": -9.5, "test_elbo_b": -9.4}])
    ('train_elbo', 'test_elbo_a', 'test_elbo_b')
    >>> _curve_keys([{"train_elbo": -9.0, "test_elbo": -9.5}])
    ('train_elbo', 'test_elbo')
    """
    named = [k for k in history[0] if k.startswith(_ESTIMATOR_CURVE) and all(k in h for h in history)]
    return ("train_elbo", *named) if named else ("train_elbo", "test_elbo")


def plot_curves(
    histories: dict[str, list[dict]],
    path: str | Path,
    title: str = "ELBO per epoch",
    caption: str = "",
    keys: tuple[str, ...] = ("train_elbo", "test_elbo"),
) -> None:
    """ELBO per epoch for one or more runs on one figure: one colour per run, one line style per metric.

    A short history (under 30 epochs) also marks each epoch, so that a run of one epoch still shows.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    styles = ["--", "-", ":", "-."]
    for i, (label, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        marks = {"marker": "o", "markersize": 3} if len(history) < _MARKED_EPOCHS else {}
        for key, style in zip(keys, itertools.cycle(styles)):
            if all(key in h for h in history):
                name = _curve_label(key)
                values = [h[key] for h in history]
                ax.plot(epochs, values, style, color=f"C{i}", label=f"{label}: {name}" if label else name, **marks)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, Path(path), title, caption)


def plot_collapse(history: list[dict], path: str | Path, caption: str = "") -> None:
    """Is the latent code used? The last epoch's KL per dimension (sorted bars), and active units per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(figsize=(9.6, 3.8))
    bars, units = fig.subplots(1, 2, width_ratios=[3, 2])
    kl = history[-1].get("kl_per_dim")
    if kl is None:
        bars.text(0.5, 0.5, "no KL per dimension:\nthe prior is not a product over dimensions", ha="center")
        bars.set_axis_off()
    else:
        ranked = sorted(kl, reverse=True)
        bars.bar(range(1, len(ranked) + 1), ranked, color="C0")
        bars.set_xlabel("latent dimension, by KL (largest first)")
        bars.set_ylabel("KL(q(z_j|x) || p(z_j)), nats per point")
        bars.set_title(f"epoch {history[-1]['epoch']}: total {sum(kl):.2f} nats", fontsize=9)
    epochs = [h["epoch"] for h in history]
    marks = {"marker": "o", "markersize": 3} if len(history) < _MARKED_EPOCHS else {}
    units.plot(epochs, [h["active_units"] for h in history], color="C1", **marks)
    units.xaxis.set_major_locator(MaxNLocator(integer=True))
    units.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = len(kl) if kl is not None else max(h["active_units"] for h in history)
    units.set_ylim(-0.3, max(top, 1) + 0.3)  # from none to every dimension active
    units.set_xlabel("epoch")
    units.set_ylabel("active units (Cov_x E[z_j|x] > 0.01)")
    units.grid(True, alpha=0.3)
    _save(fig, Path(path), "Is the latent code used? (test set)", caption)


def principal_directions(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, the first two principal directions (rows), and the fraction of variance each explains, of points ``z``."""
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    explained = s**2 / (s**2).sum()
    return mean, vh[:2], explained[:2]


@torch.no_grad()
def posterior_means(vae: nn.Module, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> Tensor:
    """The guide's mean E[z | x] for every row of ``x``: of a program's one latent site, flattened to a row (``y``:
    the labels of a program that needs them)."""
    if runs_as(vae, VAE):
        return torch.cat([vae.encode(xb).mean for xb in x.split(batch_size)])
    return torch.cat([_site_mean(vae, *batch) for batch in batches(vae, x, y, batch_size)])


def _site_mean(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    guide_trace, _ = traces(vae, *first_points(vae, x, y, len(x)))
    sites = latent_sites(guide_trace)
    if len(sites) != 1:
        raise ConfigError(f"posterior means are drawn for a program of one latent site; this one has {len(sites)}")
    (name,) = sites
    return guide_trace.nodes[name]["fn"].mean.reshape(len(x), -1)


def skipped_pictures(vae: nn.Module, data: Dataset) -> dict[str, str]:
    """The run pictures that do not apply to ``vae``, each with why (what a run's summary notes)."""
    skipped = {}
    if image_shape(tuple(data.event_shape)) is None:
        for name in ("reconstructions.png", "samples.png", "manifold.png"):
            skipped[name] = "the data are not images"
    if runs_as(vae, VAE):
        return skipped
    if label_use(vae) != "none":
        skipped.setdefault("samples.png", "a program that takes labels draws samples_by_class.png instead")
    guide_trace, _ = traces(vae, *first_points(vae, data.test, _given_labels(vae, data.test_labels)))
    sites = latent_sites(guide_trace)
    if len(sites) != 1 or finite_mean(guide_trace.nodes[sites[0]]["fn"]) is None:
        skipped["latent.png"] = f"the program has {len(sites)} latent sites; the latent picture shows one with a mean"
    skipped.setdefault("manifold.png", "a grid of decoded codes needs the VAE's decoder")
    return skipped


def _latent_coordinates(
    vae: nn.Module, x: Tensor, max_points: int, y: Tensor | None = None
) -> tuple[Tensor, tuple[str, str], str]:
    """2-D coordinates of the posterior means of ``x``: the latent itself, or its first two principal components."""
    z = posterior_means(vae, x[:max_points], y=None if y is None else y[:max_points]).double().cpu()
    latent_dim = z.shape[-1]
    if latent_dim == 2:
        return z, ("z₁", "z₂"), "the 2-D latent"
    mean, directions, explained = principal_directions(z)
    names = tuple(f"principal component {i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained.tolist()))
    how = f"the {latent_dim}-D latent on its first two principal components"
    return (z - mean) @ directions.T, names, how  # type: ignore[return-value]


def _scatter_latent(ax: Any, vae: VAE, x: Tensor, labels: Tensor | None, max_points: int) -> tuple[Any, str]:
    """Scatter the posterior means on ``ax``; returns the artist (for a colour bar) and how they were projected."""
    coords, names, how = _latent_coordinates(vae, x, max_points, _given_labels(vae, labels))
    if labels is None:
        points = ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.6)
    else:
        points = ax.scatter(
            coords[:, 0], coords[:, 1], c=labels[:max_points].cpu(), cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=9.5
        )
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(True, alpha=0.3)
    return points, how


def latent_grid(vae: VAE, x: Tensor | None = None, n: int = 15, limit: float = 2.0) -> tuple[Tensor, tuple[str, str]]:
    """Codes on a regular n×n grid over [−limit, limit]², row by row from the top left.

    A 2-D latent is gridded directly; a larger one over the plane through the origin spanned by
    the first two principal directions of the posterior means of ``x``.
    """
    a, b = torch.meshgrid(torch.linspace(-limit, limit, n), torch.linspace(limit, -limit, n), indexing="xy")
    grid = torch.stack([a.flatten(), b.flatten()], -1).double()
    if vae.latent_dim == 2:
        return grid, ("z₁", "z₂")
    if x is None:
        raise ValueError("a latent of more than 2 dimensions needs data x to find its principal directions")
    _, directions, _ = principal_directions(posterior_means(vae, x).double().cpu())
    return grid @ directions, ("along principal direction 1", "along principal direction 2")


@torch.no_grad()
def _draw_grid(ax: Any, vae: VAE, x: Tensor | None, n: int, limit: float) -> None:
    shape = image_shape(vae.event_shape)
    z, names = latent_grid(vae, x, n, limit)
    images = vae.decode(z.to(next(vae.parameters()))).mean
    h, w = shape
    ax.imshow(_grid(images, n, shape), cmap="gray_r", vmin=0, vmax=1)
    ticks = [0, n // 2, n - 1]
    ax.set_xticks([t * (w + 1) + w / 2 for t in ticks], [f"{-limit + 2 * limit * t / (n - 1):g}" for t in ticks])
    ax.set_yticks([t * (h + 1) + h / 2 for t in ticks], [f"{limit - 2 * limit * t / (n - 1):g}" for t in ticks])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])


def plot_latent_space(
    vae: VAE, x: Tensor, labels: Tensor | None, path: str | Path, caption: str = "", max_points: int = 5000
) -> None:
    """Posterior means of ``x`` coloured by label: the 2-D latent itself, or its first two principal components."""
    fig = _figure(figsize=(6.0, 5.2))
    ax = fig.subplots()
    points, how = _scatter_latent(ax, vae, x, labels, max_points)
    if labels is not None:
        fig.colorbar(points, ax=ax, ticks=range(10), label="label")
    _save(fig, Path(path), f"Latent space: posterior means of {min(len(x), max_points)} test points, {how}", caption)


def plot_manifold(
    vae: VAE, path: str | Path, x: Tensor | None = None, caption: str = "", n: int = 15, limit: float = 2.0
) -> bool:
    """Images decoded from a regular n×n grid over [−limit, limit]² of the latent (see :func:`latent_grid`).

    Returns ``False`` (and draws nothing) when the data are not images.
    """
    if image_shape(vae.event_shape) is None:
        return False
    fig = _figure(figsize=(6.0, 6.2))
    ax = fig.subplots()
    _draw_grid(ax, vae, x, n, limit)
    _save(fig, Path(path), f"Decoded latent grid over [{-limit:g}, {limit:g}]²", caption)
    return True


def plot_latent_spaces(
    vaes: dict[str, VAE],
    x: Tensor,
    labels: Tensor | None,
    path: str | Path,
    caption: str = "",
    grids: bool = False,
    max_points: int = 5000,
) -> None:
    """Several models side by side: the latent space of each, at most four to a row.

    With ``grids`` (image data), each model's decoded [−2, 2]² grid is drawn below its latent space.
    """
    grids = grids and image_shape(next(iter(vaes.values())).event_shape) is not None
    cols = min(4, len(vaes))
    blocks = math.ceil(len(vaes) / cols)
    rows = blocks * (2 if grids else 1)
    fig = _figure(figsize=(4.2 * cols, 4.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, (name, vae) in enumerate(vaes.items()):
        block, col = divmod(i, cols)
        top = axes[block * (2 if grids else 1), col]
        points, _ = _scatter_latent(top, vae, x, labels, max_points)
        top.set_title(name)
        if grids:
            _draw_grid(axes[block * 2 + 1, col], vae, x, 15, 2.0)
    for j in range(len(vaes), blocks * cols):  # empty cells of the last row
        for r in range(2 if grids else 1):
            axes[(j // cols) * (2 if grids else 1) + r, j % cols].set_axis_off()
    if labels is not None:
        fig.colorbar(points, ax=axes.ravel().tolist(), ticks=range(10), label="label", shrink=0.6)
    _save(fig, Path(path), "Posterior means of the test set" + (" and decoded latent grids" if grids else ""), caption)


def draw_pictures(
    vae: nn.Module, data: Dataset, history: list[dict], out: Path, caption: str, seed: int = 0
) -> list[str]:
    """Every picture of a run, written into ``out``; returns the file names drawn.

    Their draws (reconstructions, samples) come from torch seeded with ``seed``, outside the
    caller's random stream: a run's pictures drawn again (``pyro-vae plot``) are the same pictures.
    """
    device = device_of(vae, data.test)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _draw(vae, data, history, out, caption)


def _draw(vae: nn.Module, data: Dataset, history: list[dict], out: Path, caption: str) -> list[str]:
    drawn, skipped = [], skipped_pictures(vae, data)
    y = _given_labels(vae, data.test_labels)
    if plot_reconstructions(vae, data.test, out / "reconstructions.png", caption, y=y):
        drawn.append("reconstructions.png")
    program = None if runs_as(vae, VAE) else data.test  # any other program samples by running its model
    if "samples.png" not in skipped and plot_samples(vae, out / "samples.png", caption, x=program):
        drawn.append("samples.png")
    if "latent.png" not in skipped:
        plot_latent_space(vae, data.test, data.test_labels, out / "latent.png", caption)
        drawn.append("latent.png")
    if "manifold.png" not in skipped and plot_manifold(vae, out / "manifold.png", data.test, caption):
        drawn.append("manifold.png")
    if history:
        plot_curves({"": history}, out / "curves.png", "ELBO per epoch", caption, keys=_curve_keys(history))
        drawn.append("curves.png")
    if history and all("active_units" in h for h in history):
        plot_collapse(history, out / "collapse.png", caption)
        drawn.append("collapse.png")
    if label_use(vae) != "none":
        drawn += class_pictures(vae, data, out, caption)[0]
    return drawn


def _given_labels(vae: nn.Module, labels: Tensor | None) -> Tensor | None:
    """The labels a picture gives a program that takes them (its latent code is then that of the true label)."""
    return None if label_use(vae) == "none" else labels

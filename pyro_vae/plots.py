"""Pictures of a trained VAE: reconstructions, samples, the latent space, a decoded latent grid, curves.

Figures are drawn with matplotlib's non-interactive Agg backend (no display needed) and written
atomically as PNG. Each carries a title, and a caption line with the run's configuration.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyro_vae.storage import atomic_write
from pyro_vae.vae import VAE

__all__ = [
    "image_shape",
    "plot_reconstructions",
    "plot_samples",
    "plot_latent_space",
    "plot_manifold",
    "plot_curves",
    "plot_gradient_variance",
    "principal_directions",
    "posterior_means",
]


def image_shape(event_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """How to show one data point as an image: 2-D as is, 1-D when its length is a square; else ``None``."""
    if len(event_shape) == 2:
        return event_shape  # type: ignore[return-value]
    if len(event_shape) == 3 and event_shape[0] == 1:
        return event_shape[1:]  # type: ignore[return-value]
    if len(event_shape) == 1 and math.isqrt(event_shape[0]) ** 2 == event_shape[0]:
        side = math.isqrt(event_shape[0])
        return side, side
    return None


def _grid(images: Tensor, rows: int, shape: tuple[int, int]) -> np.ndarray:
    """Tile ``images`` (n, ...) into one array of ``rows`` rows, separated by 1-pixel light-grey lines."""
    images = images.detach().float().cpu().reshape(-1, *shape).clamp(0, 1)
    cols = math.ceil(len(images) / rows)
    h, w = shape
    canvas = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), 0.25)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return canvas.numpy()


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on first use (it adds half a second to start-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, title: str, caption: str) -> None:
    fig.suptitle(title)
    # Below the axes: savefig(bbox_inches="tight") grows the canvas to include it.
    fig.text(0.5, -0.02, caption, ha="center", va="top", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, buffer.getvalue())


def plot_reconstructions(vae: VAE, x: Tensor, path: str | Path, caption: str = "", num: int = 10) -> bool:
    """Inputs (top row) above their reconstructions (bottom row), the mean of p(x|z) at the posterior mean.

    Returns ``False`` (and draws nothing) when the data are not images.
    """
    shape = image_shape(vae.event_shape)
    if shape is None:
        return False
    x = x[:num]
    both = torch.cat([x, vae.reconstruct(x).to(x.dtype)])
    fig, ax = _pyplot().subplots(layout="constrained", figsize=(max(4.0, 0.8 * len(x)), 2.4))
    ax.imshow(_grid(both, 2, shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([(shape[0] - 1) / 2, shape[0] + (shape[0] - 1) / 2 + 1], ["input", "reconstruction"])
    ax.set_xticks([])
    _save(fig, Path(path), "Test inputs and their reconstructions", caption)
    return True


def plot_samples(vae: VAE, path: str | Path, caption: str = "", num: int = 64) -> bool:
    """Means of p(x|z) for ``num`` codes z drawn from the prior, on a square grid."""
    shape = image_shape(vae.event_shape)
    if shape is None:
        return False
    rows = math.isqrt(num)
    fig, ax = _pyplot().subplots(layout="constrained", figsize=(5, 5.4))
    ax.imshow(_grid(vae.sample(rows * rows), rows, shape), cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    _save(fig, Path(path), "Samples: decoded z ~ p(z)", caption)
    return True


def plot_gradient_variance(result: dict, path: str | Path, caption: str = "") -> None:
    """Log–log plot of the gradient's total variance against the number of particles, per estimator and group."""
    plt = _pyplot()
    rows = result["rows"]
    groups = [g for g in rows[0]["grad_variance"] if rows[0]["grad_variance"][g] is not None]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.8), squeeze=False, layout="constrained")
    for ax, group in zip(axes[0], groups):
        for estimator, style in (("mc", "o-"), ("analytic", "s--")):
            points = [(r["num_particles"], r["grad_variance"][group]) for r in rows if r["estimator"] == estimator]
            ax.loglog(*zip(*points), style, label=estimator)
        ax.set_title(f"{group} gradient")
        ax.set_xlabel("particles L")
        ax.set_ylabel("total variance")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    _save(fig, Path(path), "Gradient variance of the two ELBO estimators against the number of particles", caption)


_CURVE_LABELS = {
    "train_elbo": "train (training objective)",
    "test_elbo": "test",
    "test_elbo_mc": "test, mc estimator",
    "test_elbo_analytic": "test, analytic estimator",
}


def plot_curves(
    histories: dict[str, list[dict]],
    path: str | Path,
    title: str = "ELBO per epoch",
    caption: str = "",
    keys: tuple[str, ...] = ("train_elbo", "test_elbo"),
) -> None:
    """ELBO per epoch for one or more runs on one figure: one colour per run, one line style per metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    styles = ["--", "-", ":", "-."]
    for i, (label, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        for key, style in zip(keys, styles):
            if all(key in h for h in history):
                name = _CURVE_LABELS.get(key, key)
                ax.plot(epochs, [h[key] for h in history], style, color=f"C{i}", label=f"{label} ({name})" if label else name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, Path(path), title, caption)


def principal_directions(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, the first two principal directions (rows), and the fraction of variance each explains, of points ``z``."""
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    explained = s**2 / (s**2).sum()
    return mean, vh[:2], explained[:2]


@torch.no_grad()
def posterior_means(vae: VAE, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The guide's mean E[z | x] for every row of ``x``."""
    return torch.cat([vae.encode(xb).mean for xb in x.split(batch_size)])


def plot_latent_space(vae: VAE, x: Tensor, labels: Tensor | None, path: str | Path, caption: str = "", max_points: int = 5000) -> None:
    """Posterior means of ``x`` coloured by label: the 2-D latent itself, or its first two principal components."""
    plt = _pyplot()
    z = posterior_means(vae, x[:max_points]).double().cpu()
    if vae.latent_dim == 2:
        coords, axis_names, how = z, ("z₁", "z₂"), "the 2-D latent"
    else:
        mean, directions, explained = principal_directions(z)
        coords = (z - mean) @ directions.T
        axis_names = tuple(f"principal component {i + 1} ({100 * e:.0f}% of variance)" for i, e in enumerate(explained.tolist()))
        how = f"the {vae.latent_dim}-D latent projected on its first two principal components"
    fig, ax = plt.subplots(figsize=(6.0, 5.2), layout="constrained")
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.6)
    else:
        labels = labels[:max_points].cpu()
        points = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7, vmin=-0.5, vmax=9.5)
        fig.colorbar(points, ax=ax, ticks=range(10), label="label")
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.grid(True, alpha=0.3)
    _save(fig, Path(path), f"Latent space: posterior means of {len(z)} test points, {how}", caption)


@torch.no_grad()
def plot_manifold(vae: VAE, path: str | Path, x: Tensor | None = None, caption: str = "", n: int = 15, limit: float = 2.0) -> bool:
    """Images decoded from a regular n×n grid over [−limit, limit]² of the latent.

    A 2-D latent is gridded directly. A larger one is gridded over the plane through the origin
    spanned by the first two principal directions of the posterior means of ``x``.
    Returns ``False`` (and draws nothing) when the data are not images.
    """
    plt = _pyplot()
    shape = image_shape(vae.event_shape)
    if shape is None:
        return False
    values = torch.linspace(limit, -limit, n)  # top row: largest second coordinate
    a, b = torch.meshgrid(torch.linspace(-limit, limit, n), values, indexing="xy")
    grid = torch.stack([a.flatten(), b.flatten()], -1)
    if vae.latent_dim == 2:
        z, axis_names = grid, ("z₁", "z₂")
    else:
        if x is None:
            raise ValueError("a latent of more than 2 dimensions needs data x to find its principal directions")
        _, directions, _ = principal_directions(posterior_means(vae, x).double().cpu())
        z, axis_names = grid.double() @ directions, ("along principal direction 1", "along principal direction 2")
    param = next(vae.parameters())
    images = vae.decode(z.to(param)).mean
    fig, ax = plt.subplots(figsize=(6.0, 6.2), layout="constrained")
    h, w = shape
    ax.imshow(_grid(images, n, shape), cmap="gray_r", vmin=0, vmax=1)
    ticks = [0, n // 2, n - 1]
    ax.set_xticks([t * (w + 1) + w / 2 for t in ticks], [f"{-limit + 2 * limit * t / (n - 1):g}" for t in ticks])
    ax.set_yticks([t * (h + 1) + h / 2 for t in ticks], [f"{limit - 2 * limit * t / (n - 1):g}" for t in ticks])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    _save(fig, Path(path), f"Decoded latent grid over [{-limit:g}, {limit:g}]²", caption)
    return True

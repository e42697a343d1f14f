"""Pictures of a trained VAE: reconstructions and samples from the prior.

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

__all__ = ["image_shape", "plot_reconstructions", "plot_samples"]


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


def plot_curves(histories: dict[str, list[dict]], path: str | Path, title: str = "ELBO per epoch", caption: str = "") -> None:
    """Train (dashed) and test (solid) ELBO per epoch for one or more runs, on one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for i, (label, history) in enumerate(histories.items()):
        epochs = [h["epoch"] for h in history]
        color = f"C{i}"
        ax.plot(epochs, [h["train_elbo"] for h in history], "--", color=color, label=f"{label} (train)")
        ax.plot(epochs, [h["test_elbo"] for h in history], "-", color=color, label=f"{label} (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, Path(path), title, caption)

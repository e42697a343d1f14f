"""The drawing every picture shares: figures apart from matplotlib's global state, image grids, captions, and
reading a program's image from its model trace (:mod:`pyro_vae.runs.plots`, :mod:`pyro_vae.runs.class_plots`).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.infer.program import finite_mean, sample_sites
from pyro_vae.runs.storage import atomic_write

__all__ = ["image_shape"]


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


def _figure(**kwargs: Any) -> Any:
    """A new figure with constrained layout, bound to no backend and unknown to the global figure manager.

    matplotlib is imported on first use (it adds half a second to start-up).
    """
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _save(fig: Any, path: Path, title: str, caption: str) -> None:
    fig.suptitle(title)
    # Below the axes: savefig(bbox_inches="tight") grows the canvas to include it.
    fig.text(0.5, -0.02, caption, ha="center", va="top", fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, palette_png(buffer.getvalue()))


def palette_png(png: bytes) -> bytes:
    """A PNG re-encoded with a 256-colour palette: plots look the same at a third of the size."""
    from PIL import Image  # Pillow comes with matplotlib

    out = io.BytesIO()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


class _AtMeans(Messenger):
    """Each latent site of a guide takes its distribution's mean, where it has a finite one, instead of a draw."""

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or msg["done"] or site_is_subsample(msg):
            return
        mean = finite_mean(msg["fn"])
        if mean is not None:
            msg["value"], msg["done"] = mean, True


def _data_mean(model_trace: Any, x: Tensor) -> Tensor | None:
    """The mean of the model's one observed site of ``x`` (its values, perhaps reshaped), in ``x``'s shape.

    ``None`` where no observed site (or one unconditioned, for samples), or more than one, holds as many values as
    ``x``.
    """
    observed = [s for s in sample_sites(model_trace) if s["is_observed"] or s["infer"].get("was_observed")]
    sites = [s for s in observed if s["value"].numel() == x.numel()]
    return sites[0]["fn"].mean.detach().reshape(x.shape) if len(sites) == 1 else None

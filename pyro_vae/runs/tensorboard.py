"""TensorBoard logs of a run (``train.log = "tensorboard"``, ``--log tensorboard``).

Every epoch's numeric metrics become scalars, its KL per latent dimension a histogram, and the
run's pictures images, in ``RUN_DIR/tensorboard``: ``tensorboard --logdir runs`` shows every run.
It needs the ``tensorboard`` package, the ``pyro-vae[tensorboard]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pyro_vae.errors import ConfigError

__all__ = ["TensorBoard", "check_tensorboard", "LOG_FOLDER"]

#: Where in a run folder the event files go.
LOG_FOLDER = "tensorboard"


def check_tensorboard() -> None:
    """A one-line :class:`ConfigError` when the ``tensorboard`` package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError(
            "{log} = tensorboard needs the tensorboard package: pip install 'pyro-vae[tensorboard]'", "log"
        ) from None


class TensorBoard:
    """Writes a run's metrics and pictures as TensorBoard events into ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path, first_epoch: int | None = None) -> None:
        """``first_epoch``: a resumed run's first epoch; events of it and later ones, left by the killed run, go."""
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / LOG_FOLDER), purge_step=first_epoch)

    def epoch(self, metrics: dict[str, Any]) -> None:
        """One epoch's metrics: numbers as scalars (``elbo/train_elbo``, ...), the KL per dimension as a histogram."""
        step = metrics["epoch"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                group = "elbo" if "elbo" in key else "training"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        if metrics.get("kl_per_dim"):
            self.writer.add_histogram("kl_per_dim", np.asarray(metrics["kl_per_dim"]), step)
        self.writer.flush()

    def pictures(self, run_dir: Path, names: list[str], step: int) -> None:
        """The run's PNG pictures ``names`` as images at ``step``."""
        from PIL import Image

        for name in names:
            if name.endswith(".png"):
                with Image.open(Path(run_dir) / name) as image:
                    pixels = np.asarray(image.convert("RGB"))
                self.writer.add_image(f"pictures/{Path(name).stem}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

"""Files that are never half-written, and checkpoints that never run code when read.

Every file of a run is written to a temporary name in its folder and renamed over the target,
so a crash leaves either the old file or the new one. Checkpoints hold only tensors and plain
Python values and are read with ``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import RunError

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

#: Version of the checkpoint layout; bumped when it changes incompatibly.
CHECKPOINT_FORMAT = 1


def atomic_write(path: str | Path, payload: bytes | str) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    data = payload.encode() if isinstance(payload, str) else payload
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values, tagged with :data:`CHECKPOINT_FORMAT`, atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: no pickled code runs, and unreadable files give a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist; train first (pyro-vae train --out {path.parent})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects other than tensors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RunError(f"cannot read checkpoint {path} ({first}); it is damaged or not a pyro-vae checkpoint: retrain, or restore it from a copy") from None
    if not isinstance(state, dict) or "format" not in state:
        raise RunError(f"{path} is not a pyro-vae checkpoint (no format tag); point to a run folder written by pyro-vae train")
    if state["format"] != CHECKPOINT_FORMAT:
        raise RunError(f"checkpoint {path} has format {state['format']!r}, this pyro-vae reads format {CHECKPOINT_FORMAT}; use the pyro-vae version that wrote it, or retrain")
    return state

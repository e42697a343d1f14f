"""Files that are never half-written, and checkpoints that never run code when read.

Every file of a run is written to a temporary name in its folder and renamed over the target,
so a crash leaves either the old file or the new one. Checkpoints hold only tensors and plain
Python values and are read with ``torch.load(..., weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import RunError

__all__ = [
    "WriteError",
    "hold_folder",
    "check_not_held",
    "LOCK_FILE",
    "atomic_write",
    "remove_partial_writes",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
    "READABLE_FORMATS",
]

#: Version of the checkpoint layout written now; bumped when it changes. Format 2 adds the
#: training state (random number generators, data order, position) that ``--resume`` needs.
CHECKPOINT_FORMAT = 2
#: Formats this version reads: format 1 checkpoints load and evaluate, but cannot be resumed.
READABLE_FORMATS = (1, 2)


class WriteError(RunError):
    """A file could not be written (a full disk, a quota, permissions); the previous version is intact."""


#: What to do when a write fails for want of space: the error numbers of a full disk and of a quota.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(path: Path, error: OSError) -> WriteError:
    reason = error.strerror or type(error).__name__
    if error.errno in _NO_SPACE:
        fix = f"free space in {path.parent} (or write to another folder)"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {path.parent} writable (or write to another folder)"
    else:
        fix = f"check {path.parent} (or write to another folder)"
    return WriteError(f"cannot write {path.name} in {path.parent}: {reason}; {fix}")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, payload: bytes | str) -> None:
    """Write ``payload`` to ``path`` through a temporary file and an atomic rename.

    Raises:
        WriteError: the file could not be written; ``path`` is as it was, and no temporary file is left.
    """
    path = Path(path)
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        _write_and_rename(path, data)
    except OSError as e:
        raise _write_error(path, e) from None


def _write_and_rename(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: The lock a process writing a run folder holds: ``pid host`` of that process.
LOCK_FILE = ".lock"


def _holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock, ``"process PID on HOST"``, or ``None`` when no live process does."""
    lock = folder / LOCK_FILE
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except OSError:  # no lock
        return None
    except ValueError:  # being written this instant, or torn by a crash long ago
        return "a process starting this instant" if _age(lock) < 5 else None
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a stale lock: its process is gone
        except PermissionError:
            pass  # alive, another user's
    return f"process {pid} on {host}"


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def check_not_held(folder: str | Path) -> None:
    """A :class:`RunError` if another live process holds ``folder`` (see :func:`hold_folder`)."""
    holder = _holder(Path(folder))
    if holder is not None and holder != f"process {os.getpid()} on {socket.gethostname()}":
        raise RunError(
            f"{folder} is being written by {holder}; wait for that run to end or stop it, or write to another "
            f"folder (if that process is gone, as after a machine restarts, delete {Path(folder) / LOCK_FILE})"
        )


@contextlib.contextmanager
def hold_folder(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s lock file while writing it: a second writer is refused; a dead holder's lock is taken over."""
    folder = Path(folder)
    _take_lock(folder / LOCK_FILE)
    try:
        yield
    finally:
        (folder / LOCK_FILE).unlink(missing_ok=True)


def _take_lock(path: Path) -> None:
    """Create the lock file, only if none exists (atomic), after removing one whose process is gone."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            check_not_held(path.parent)  # a live holder: refused
            path.unlink(missing_ok=True)  # a dead one's: taken over
            continue
        except OSError as e:
            raise _write_error(path, e) from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return
    raise RunError(f"{path.parent}: another process keeps taking its lock ({path}); try again")


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that a write killed before its rename left in ``folder``; returns them."""
    partial = sorted(Path(folder).glob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a dict of tensors and plain values, tagged with :data:`CHECKPOINT_FORMAT`, atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    atomic_write(path, buffer.getvalue())


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: no pickled code runs, and unreadable files give a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist; train first (pyro-vae train --out {path.parent})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on legacy pickle files; the outcome is reported below
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # torch's safe loader met an object it would have to run code to build
            raise RunError(
                f"checkpoint {path} holds pickled Python objects, which pyro-vae never loads (they could run code); "
                "use a checkpoint written by pyro-vae train, or retrain"
            ) from None
        # torch's own first line here advises loading with weights_only=False, which is never safe to repeat
        raise RunError(
            f"cannot read checkpoint {path} (not written by torch.save); "
            "it is damaged or not a pyro-vae checkpoint: retrain, or restore it from a copy"
        ) from None
    except Exception as e:  # truncated or not a torch file
        raise RunError(
            f"cannot read checkpoint {path} ({_first_line(e)}); "
            "it is damaged or not a pyro-vae checkpoint: retrain, or restore it from a copy"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise RunError(
            f"{path} is not a pyro-vae checkpoint (no format tag); point to a run folder written by pyro-vae train"
        )
    if state["format"] not in READABLE_FORMATS:
        known = ", ".join(map(str, READABLE_FORMATS))
        raise RunError(
            f"checkpoint {path} has format {state['format']!r}, this pyro-vae reads formats {known}; "
            "use the pyro-vae version that wrote it, or retrain"
        )
    return state

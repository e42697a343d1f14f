"""Errors a user can act on, worded for the layer the user called.

Every exception raised for bad input (a config value, a data file, a run folder, a checkpoint)
derives from :class:`PyroVAEError`; its message is one line naming the field or file, the value
and the fix. The command line prints that line and exits non-zero without a traceback.

A library function names its own parameters: ``num_particles must be >= 1 (got 0)``. Its message
marks them as slots, ``{num_particles}`` for the name and ``{num_particles=}`` for how to set it,
and each layer above fills them in its own words (:meth:`PyroVAEError.renamed`): the config layer
says ``train.num_particles``, the command line adds the flag ``--num-particles``.

Example:
    >>> e = ConfigError("{batch_size} (500) exceeds the data (100 points); use {batch_size=}100 or less", "batch_size")
    >>> str(e)
    'batch_size (500) exceeds the data (100 points); use batch_size=100 or less'
    >>> str(e.renamed({"batch_size": ("train.batch_size", "--batch-size ")}))
    'train.batch_size (500) exceeds the data (100 points); use --batch-size 100 or less'
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping

__all__ = ["PyroVAEError", "ConfigError", "DataError", "RunError", "renamed_errors"]

_SLOT = re.compile(r"\{(\w+)(=?)\}")


class PyroVAEError(Exception):
    """Base class of the errors caused by input the user can fix.

    Args:
        message: the one-line message; ``{p}`` and ``{p=}`` are slots for each parameter ``p`` in ``params``.
        params: the parameters the message names, as the raising function calls them; ``"p=value"``
            fills ``{p=}`` with that assignment (``"overwrite=True"``), plain ``"p"`` with ``p=``.

    Example:
        >>> e = PyroVAEError("{num_particles} must be >= 1 (got 0); use {num_particles=}1", "num_particles")
        >>> str(e), e.params
        ('num_particles must be >= 1 (got 0); use num_particles=1', ('num_particles',))
        >>> str(e.renamed({"num_particles": ("train.num_particles", "--num-particles ")}))
        'train.num_particles must be >= 1 (got 0); use --num-particles 1'
    """

    def __init__(self, message: str = "", *params: str) -> None:
        super().__init__(message)
        self.template = message
        self.names = {p.partition("=")[0]: (p.partition("=")[0], p if "=" in p else f"{p}=") for p in params}

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(self.names)

    def __str__(self) -> str:
        if not self.names:
            return super().__str__()
        return _SLOT.sub(lambda m: self.names[m[1]][bool(m[2])] if m[1] in self.names else m[0], self.template)

    def renamed(self, names: Mapping[str, tuple[str, str]]) -> PyroVAEError:
        """A copy whose parameters are called as ``names`` says: ``{param: (name, how to set it)}``."""
        out = copy.copy(self)
        out.names = {p: names.get(p, shown) for p, shown in self.names.items()}
        return out


class ConfigError(PyroVAEError, ValueError):
    """A configuration value (from a file, the command line or a keyword) is invalid.

    Args:
        message: the one-line message, with slots for ``params`` (see :class:`PyroVAEError`).
        params: the parameters the message names.

    Example:
        >>> from pyro_vae import Config
        >>> try:
        ...     Config.from_dict({"train": {"epochs": 0}})
        ... except ConfigError as e:
        ...     print(e)
        train.epochs must be >= 1 (got 0)
    """


class DataError(PyroVAEError, ValueError):
    """A data set cannot be found, read, or does not fit the model.

    Args:
        message: the one-line message, with slots for ``params`` (see :class:`PyroVAEError`).
        params: the parameters the message names.

    Example:
        >>> from pyro_vae import load_dataset
        >>> try:
        ...     load_dataset("no-such-file.npy")
        ... except DataError as e:
        ...     print(type(e).__name__, isinstance(e, ValueError))
        DataError True
    """


class RunError(PyroVAEError):
    """A run folder or checkpoint is missing, unreadable or incompatible.

    Args:
        message: the one-line message, with slots for ``params`` (see :class:`PyroVAEError`).
        params: the parameters the message names.

    Example:
        >>> from pyro_vae import load
        >>> try:
        ...     load("no-such-run")
        ... except RunError as e:
        ...     print(e)
        run folder no-such-run does not exist; give the --out folder of a finished pyro-vae train
    """


@contextlib.contextmanager
def renamed_errors(names: Mapping[str, tuple[str, str]]) -> Iterator[None]:
    """Re-raise a :class:`PyroVAEError` from inside with its parameters called as ``names`` says (cause: original)."""
    try:
        yield
    except PyroVAEError as e:
        if not set(e.names) & set(names):
            raise
        raise e.renamed(names).with_traceback(None) from e

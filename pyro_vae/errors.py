"""Errors a user can act on.

Every exception raised for bad input (a config value, a data file, a run folder, a checkpoint)
derives from :class:`PyroVAEError`; its message is one line naming the field or file, the value
and the fix. The command line prints that line and exits non-zero without a traceback.
"""

__all__ = ["PyroVAEError", "ConfigError", "DataError", "RunError"]


class PyroVAEError(Exception):
    """Base class of the errors caused by input the user can fix."""


class ConfigError(PyroVAEError, ValueError):
    """A configuration value (from a file, the command line or a keyword) is invalid."""


class DataError(PyroVAEError, ValueError):
    """A data set cannot be found, read, or does not fit the model."""


class RunError(PyroVAEError):
    """A run folder or checkpoint is missing, unreadable or incompatible."""

"""Errors about the user's input. The CLI prints them as one line (no traceback); each message
names the file or key at fault and, where there is one, the fix."""


class UserError(Exception):
    """Base class: bad input, not a bug in vidadapt."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


class DataError(UserError, ValueError):
    """An annotation file, video or dataset option is wrong."""


class ConfigError(UserError, ValueError):
    """A config key or value is wrong."""


class Interrupted(UserError):
    """The user stopped a run (Ctrl-C); the message says how to continue it."""


class StorageError(UserError, OSError):
    """A file could not be written (a full disk, a read-only folder...)."""

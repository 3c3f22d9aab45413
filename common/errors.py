"""The one error type a user can cause.

Every mistake a user can make and fix (a bad setting, a missing file, a corrupt checkpoint,
being offline) raises a subclass of UserError whose message names the fix. Each program's
main() catches UserError alone and prints it as one `error: ...` line, never a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work: the command line, a config file, or a model's shape."""


class DataError(UserError):
    """A problem with the data the user can fix (bad path, bad text, offline, ...)."""

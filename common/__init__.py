"""Plumbing that data/, model/, training/ and the two scripts share, each fact said once:

    errors.py   UserError, the one base class of every error a user can cause and fix
    files.py    atomic_write (temp file + rename) and the clean-up of stale temp files
    device.py   which device, dtype and distributed backend a run uses
"""

from .errors import ConfigError, UserError

__all__ = ["UserError", "ConfigError"]

"""Errors a user can act on, each with its process exit status.

Every one of these reaches the user as a single line on stderr (see
``dtlnd.cli``); anything else is a bug and keeps its traceback.  The exit
statuses follow sysexits(3) so that systemd's ``RestartPreventExitStatus=``
can tell a misconfiguration (no point restarting) from a crash.
"""

from __future__ import annotations

from typing import Optional, TypeVar


class DtlndError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_status = 1
    #: Set by `remedied`: the problem alone, and the key of what would help.
    what: str = ""
    remedy: Optional[str] = None


class UsageError(DtlndError):
    """Arguments that cannot work together (e.g. AEC without a reference)."""

    exit_status = 64  # EX_USAGE


class InputError(DtlndError):
    """An input file that is missing, unreadable, empty or not audio."""

    exit_status = 65  # EX_DATAERR


class DeviceError(DtlndError):
    """An audio device that does not exist or cannot be opened."""

    exit_status = 69  # EX_UNAVAILABLE


class OutputError(DtlndError):
    """An output file or folder that cannot be written."""

    exit_status = 73  # EX_CANTCREAT


class ConfigError(DtlndError):
    """A configuration file or setting that is invalid."""

    exit_status = 78  # EX_CONFIG


class ModelError(ConfigError):
    """A model pair that is missing, corrupt or unfit for the asked mode."""


#: What would help, in the library's words, by key.  The command line words
#: the same keys in terms of its options (``dtlnd.cli._REMEDIES``): only it
#: speaks of flags.
REMEDIES = {
    "network": "check the network, or install from a mirror or from a local folder",
    "url": "the file is not at that URL: check the mirror, or install from a local folder",
    "source": "use a source that serves the real file (a mirror or a local folder)",
    "dir": "check free space and permissions, or pick another model folder",
    "model_dir": "if it is installed elsewhere, point the model folder there",
}

_E = TypeVar("_E", bound=DtlndError)


def remedied(cls: type[_E], what: str, remedy: str) -> _E:
    """``cls("what; remedy")`` that keeps both halves (``.what``, ``.remedy``) for rewording."""
    exc = cls(f"{what}; {REMEDIES[remedy]}")
    exc.what, exc.remedy = what, remedy
    return exc


class ExtraMissing(DtlndError):
    """An optional feature whose extra (e.g. ``dtlnd[eval]``) is not installed."""

    exit_status = 69  # EX_UNAVAILABLE

"""Errors a user can act on, each with its process exit status.

Every one of these reaches the user as a single line on stderr (see
``dtlnd.cli``); anything else is a bug and keeps its traceback.  The exit
statuses follow sysexits(3) so that systemd's ``RestartPreventExitStatus=``
can tell a misconfiguration (no point restarting) from a crash.
"""

from __future__ import annotations


class DtlndError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_status = 1


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


class ExtraMissing(DtlndError):
    """An optional feature whose extra (e.g. ``dtlnd[eval]``) is not installed."""

    exit_status = 69  # EX_UNAVAILABLE

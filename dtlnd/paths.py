"""Where dtlnd looks for things when the user has not said."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = Path("/etc/dtlnd/dtlnd.yaml")
SYSTEM_MODEL_DIR = Path("/var/lib/dtlnd/models")


def user_model_dir() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "dtlnd" / "models"


def model_search_path() -> list[Path]:
    """Folders searched for model pairs, first match wins.

    ``$DTLND_MODEL_DIR`` alone when set (tests and CI point it at a fixed
    folder); otherwise the user's data folder, then the system folder that
    ``install.sh`` and ``dtlnd models fetch`` (as root) fill.
    """
    env = os.environ.get("DTLND_MODEL_DIR")
    if env:
        return [Path(env)]
    return [user_model_dir(), SYSTEM_MODEL_DIR]


def default_fetch_dir() -> Path:
    """Where ``dtlnd models fetch`` installs when no ``--dir`` is given."""
    env = os.environ.get("DTLND_MODEL_DIR")
    if env:
        return Path(env)
    return SYSTEM_MODEL_DIR if os.geteuid() == 0 else user_model_dir()

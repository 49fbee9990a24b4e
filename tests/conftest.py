"""Shared fixtures: the real model files and recordings from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DTLND_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
AUDIO = SHARED / "audio"

if not (MODELS / "dtln_ns_float_1.tflite").exists():
    raise pytest.UsageError(f"shared models not found in {MODELS}: set DTLND_SHARED to the shared folder")

# Everything the tests run, in-process or as a subprocess, finds the models here.
os.environ["DTLND_MODEL_DIR"] = str(MODELS)

# The alignment tests' recordings and engine (fixtures of tests/align_util.py).
pytest_plugins = ["align_util"]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO


@pytest.fixture(autouse=True)
def no_leftovers():
    """No process a test started through tests/rig.py outlives it (it would hold the rig's PCMs)."""
    yield
    from rig import kill_leftovers

    kill_leftovers()

"""Skip (or, with ``DTLND_REQUIRE_TOOLS=1`` as in CI, fail) tests that need the ``eval`` extra."""

from __future__ import annotations

import importlib.util
import os

import pytest

from dtlnd.evaluate import EXTRA_MODULES


def missing_extra() -> list[str]:
    return [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]


@pytest.fixture
def eval_extra() -> None:
    """Use as a fixture: the test needs speechmos, pesq, pystoi, ... installed."""
    missing = missing_extra()
    if missing:
        msg = f"the eval extra is not installed ({', '.join(missing)}): pip install -e '.[eval]'"
        if os.environ.get("DTLND_REQUIRE_TOOLS", "") not in ("", "0"):
            pytest.fail(msg)
        pytest.skip(msg)

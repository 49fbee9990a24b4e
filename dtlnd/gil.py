"""The GIL's switch interval, kept short for the audio callbacks.

An audio callback needs the GIL for its Python parts, and takes it again
after each ``invoke()`` (which releases it): two to four times per block.
When another thread runs Python at that moment (the supervisor's report,
the reference alignment's estimator, a pipelined worker), CPython asks it
to let go only after the *switch interval*, 5 ms by default: more than half
the 8 ms budget, per acquisition.  dtlnd sets it to `SWITCH_INTERVAL`, so a
callback waits about that long at most each time.  Nothing else changes:
threads switch that often only while one of them waits for the GIL.
Measured on the rig (``bench/policy_ab.py --b DTLND_SWITCH_INTERVAL=0.005
--mode aec``, six A/B pairs of 20 s): the engine's worst block per run was
1.6 ms (median; at most 2.3) against 5.1 ms (up to 8.0, one run failing on
it) with Python's 5 ms; mean and p99 did not change.

``DTLND_SWITCH_INTERVAL=SECONDS`` sets another value, to measure the
difference (``bench/policy_ab.py``).
"""

from __future__ import annotations

import math
import os
import sys

from .errors import ConfigError

SWITCH_INTERVAL = 0.0005  # seconds


def shorten() -> float:
    """Set the switch interval for the daemon (before the streams start); return the one it replaced."""
    text = os.environ.get("DTLND_SWITCH_INTERVAL") or str(SWITCH_INTERVAL)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ConfigError(f"DTLND_SWITCH_INTERVAL={text!r}: give seconds between 0 and 1, or unset it")
    previous = sys.getswitchinterval()
    sys.setswitchinterval(value)
    return previous

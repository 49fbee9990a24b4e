"""Count the numpy arrays a function allocates, including ones freed before it returns.

tracemalloc traces numpy's data buffers in their own domain.  A profile
hook sees every C-function return (each numpy call) while the function
runs, and counts the numpy buffers alive then beyond those alive before:
a temporary array shows up at the return of the call that made it, even
though it is gone by the time the function ends.
"""

from __future__ import annotations

import sys
import tracemalloc
from typing import Callable

import numpy as np


def temporaries(fn: Callable[[], object], calls: int) -> int:
    """The most extra numpy buffers alive at any C-call return during ``calls`` calls of ``fn``."""
    filt = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        fn()
        base = len(tracemalloc.take_snapshot().filter_traces(filt).traces)
        worst = 0

        def hook(frame, event, arg) -> None:
            nonlocal worst
            if event == "c_return":
                worst = max(worst, len(tracemalloc.take_snapshot().filter_traces(filt).traces) - base)

        sys.setprofile(hook)
        try:
            for _ in range(calls):
                fn()
        finally:
            sys.setprofile(None)
    finally:
        tracemalloc.stop()
    return worst

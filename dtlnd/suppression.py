"""``max_suppression``: a floor under the output, relative to the input.

Users of wake-word engines and ASR often prefer some residual noise to an
over-suppressed signal.  `SuppressionLimit` wraps a hop processor and adds
the time-aligned input, scaled by 10^(−DB/20), to every output hop, so that
where the models remove (nearly) everything the output sits DB below the
input.  The input is the microphone hop as the engine saw it (non-finite
samples zeroed), held in a preallocated ring of ``delay`` samples; a hop
is two ufunc calls and allocates nothing.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .constants import SHIFT, SUPPRESSION_RANGE_DB
from .errors import UsageError
from .hop import HopProcessor, Wrapper


class SuppressionLimit(Wrapper):
    """``inner``'s output plus its input delayed by ``inner.delay`` and attenuated by ``db``."""

    def __init__(self, inner: HopProcessor, db: float) -> None:
        lo, hi = SUPPRESSION_RANGE_DB
        if not lo <= db <= hi:
            raise UsageError(f"max_suppression {db} dB: use {lo:g}..{hi:g} dB, e.g. 20")
        if inner.delay % SHIFT:
            raise ValueError(f"delay {inner.delay} is not a whole number of hops")
        super().__init__(inner)
        self.db = db
        self._ring = np.zeros((inner.delay // SHIFT, SHIFT), np.float32)
        self._rows = tuple(self._ring)
        self._gain = np.full(SHIFT, 10.0 ** (-db / 20.0), np.float32)
        self._turn = 0
        self._hop = inner.process_hop

    def process_hop(self, mic: np.ndarray, far: Optional[np.ndarray], out: np.ndarray) -> None:
        self._hop(mic, far, out)
        turn = self._turn
        row = self._rows[turn]  # the input of ``delay`` samples ago, already scaled
        np.add(out, row, out)
        np.multiply(self.input_hop, self._gain, row)
        self._turn = turn + 1 if turn + 1 < len(self._rows) else 0

    def reset(self) -> None:
        self.inner.reset()
        self._ring.fill(0.0)
        self._turn = 0

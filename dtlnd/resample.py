"""Fixed-ratio rate conversion between 16 kHz and a device's rate, for the audio callbacks.

Devices that cannot run at 16 kHz usually run at 48 kHz, exactly three
times the models' rate.  `Polyphase` converts 1:3 and 3:1 with a
linear-phase FIR (Kaiser-windowed sinc, 8.6 kHz design cut-off at 48 kHz,
~80 dB stopband) as one matrix product per callback: the input history and
its Toeplitz matrix are arrays made in ``__init__``, the matrix is refilled
in place with ``np.copyto`` and multiplied with ``np.dot(..., out=)``, so a
callback allocates no array.  Its delay, ``delay`` 16 kHz samples, belongs
in the latency report.

Other rates (44.1 kHz, 22.05 kHz, ...) go through soxr's ``ResampleStream``
(`SoxrStream`), whose ``resample_chunk`` returns a new array on every call:
that path allocates per callback, and says so in its docstring.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .constants import RATE, SHIFT

#: FIR taps per output phase (even): at ratio 3, 217 taps at 48 kHz, padded to 219.
TAPS_PER_PHASE = 72


def lowpass(factor: int, taps_per_phase: int = TAPS_PER_PHASE) -> np.ndarray:
    """The prototype filter at ``factor`` x 16 kHz: pass to ~7.2 kHz, stop from ~8.4 kHz, gain ``factor``.

    ``factor * taps_per_phase + 1`` taps (centre on a whole 16 kHz sample, so the delay
    is an integer there), zero-padded to ``factor * (taps_per_phase + 1)``.
    """
    n = factor * taps_per_phase + 1
    fs = RATE * factor
    cutoff = 7800.0 / fs  # cycles per sample; the transition band is centred just below 8 kHz
    t = np.arange(n) - (n - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, 8.0)
    h = np.concatenate([h * factor / h.sum(), np.zeros(factor - 1)])
    return h.astype(np.float32)


class Polyphase:
    """``up``: SHIFT samples at 16 kHz -> ``factor`` x SHIFT at the device rate; else the reverse.

    One direction, one channel, fixed block sizes; ``process`` allocates nothing.
    """

    def __init__(self, factor: int, up: bool, taps_per_phase: int = TAPS_PER_PHASE) -> None:
        self.factor = factor
        self.up = up
        h = lowpass(factor, taps_per_phase)
        #: group delay, whole 16 kHz samples (the filter is linear-phase)
        self.delay = taps_per_phase // 2
        taps_per_phase += 1
        n_out = SHIFT  # 16 kHz rows: one per 16 kHz sample in or out
        if up:
            k = taps_per_phase
            # y[f*m + p] = sum_j h[f*j + p] * x[m - j]: row m of the window holds x[m-k+1 .. m].
            self._hist = np.zeros(SHIFT + k - 1, np.float32)
            self._coef = np.ascontiguousarray(h.reshape(k, factor)[::-1])  # (k, f): tap j reversed
            self.in_size, self.out_size = SHIFT, factor * SHIFT
            step = 1
        else:
            k = factor * taps_per_phase
            # y[m] = sum_j h[j] * x[f*m - j]: row m of the window holds x[f*m - k + 1 .. f*m].
            self._hist = np.zeros(factor * SHIFT + k - 1, np.float32)
            self._coef = np.ascontiguousarray(h[::-1].reshape(k, 1) / factor)
            self.in_size, self.out_size = factor * SHIFT, SHIFT
            step = factor
        keep = len(self._hist) - self.in_size  # < in_size here, so the two views never overlap
        self._old, self._older, self._new = self._hist[:keep], self._hist[self.in_size:], self._hist[keep:]
        item = self._hist.itemsize
        self._window = as_strided(self._hist, shape=(n_out, k), strides=(step * item, item), writeable=False)
        self._matrix = np.zeros((n_out, k), np.float32)
        self._result = np.zeros((n_out, self._coef.shape[1]), np.float32)
        self._flat = self._result.reshape(-1)

    def reset(self) -> None:
        self._hist.fill(0.0)

    def process(self, x: np.ndarray, out: np.ndarray) -> None:
        """Convert ``x`` (``in_size`` samples, any stride) into ``out`` (``out_size``, contiguous float32)."""
        np.copyto(self._old, self._older)
        np.copyto(self._new, x)
        np.copyto(self._matrix, self._window)
        np.dot(self._matrix, self._coef, out=self._result)
        np.copyto(out, self._flat)


class SoxrStream:
    """soxr's streaming resampler for any other ratio.  Allocates: ``resample_chunk`` returns new arrays."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        import soxr

        self._s = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
        self.delay = 0.0  # soxr HQ: about 1 ms, not reported by the library; counted as none

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._s.resample_chunk(np.ascontiguousarray(x, np.float32))


class OutputFifo:
    """16 kHz from the bridge to any other output rate, in whole output periods of 10 ms.

    The period is ``rate / 100`` frames (441 at 44.1 kHz) and takes 160
    samples from the bridge on average; soxr returns a varying count per
    chunk, so its output queues here until a period is complete.  The
    FIFO's mean fill (about half a period) and soxr's delay are in
    ``delay``.  Allocates per call (soxr), unlike `Polyphase`.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frames = rate // 100
        self._soxr = SoxrStream(RATE, rate, 1)
        self._hop = np.zeros(RATE // 100, np.float32)
        self._q = np.zeros(4 * self.frames + 4096, np.float32)
        self._n = 0
        self.delay = RATE / 100  # the silent pre-roll plus half a period, about, in 16 kHz samples

    def reset(self) -> None:
        """Empty, then pre-roll soxr with silence so that its start-up delay takes nothing from the bridge."""
        self._n = 0
        self._soxr = SoxrStream(RATE, self.rate, 1)
        self._hop.fill(0.0)
        while self._n < self.frames:
            y = self._soxr.process(self._hop[:, None])[:, 0]
            self._q[self._n:self._n + len(y)] = y
            self._n += len(y)

    def fill(self, bridge: Any, out: np.ndarray) -> None:
        """``out`` (``frames`` samples) from the bridge, through soxr."""
        while self._n < self.frames:
            bridge.read(self._hop)
            y = self._soxr.process(self._hop[:, None])[:, 0]
            self._q[self._n:self._n + len(y)] = y
            self._n += len(y)
        out[:] = self._q[:self.frames]
        rest = self._n - self.frames
        self._q[:rest] = self._q[self.frames:self._n]
        self._n = rest


def integer_factor(rate: int) -> int:
    """``rate`` / 16000 when that is a whole number from 2 to 6, else 0 (soxr's case)."""
    q, r = divmod(rate, RATE)
    return q if r == 0 and 2 <= q <= 6 else 0

"""Fixed-ratio rate conversion between 16 kHz and a device's rate, for the audio callbacks.

Devices that cannot run at 16 kHz usually run at 48 kHz, exactly three
times the models' rate.  `Polyphase` converts 1:3 and 3:1 with a
linear-phase FIR (Kaiser-windowed sinc, 8.6 kHz design cut-off at 48 kHz,
~80 dB stopband) as one matrix product per callback: the input history and
its Toeplitz matrix are arrays made in ``__init__``, the matrix is refilled
in place with ``np.copyto`` and multiplied with ``np.dot(..., out=)``, so a
callback allocates no array.  Its delay, ``delay`` 16 kHz samples, belongs
in the latency report.

Other rates (44.1 kHz, 22.05 kHz, ...) go through `Rational`: the same
windowed sinc, as one fixed matrix per whole number of the two rates'
common periods (10 ms at 44.1 kHz), also without allocation.
`converter` picks one of the two for a rate.
"""

from __future__ import annotations

import math
from typing import Optional

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
        #: what the log says it is: 16 kHz : device rate
        self.label = f"FIR {factor}:1" if up else f"FIR 1:{factor}"
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


class Rational:
    """``up``: 16 kHz -> ``rate``; else ``rate`` -> 16 kHz, for any rate with no integer ratio (44.1 kHz...).

    ``rate`` / 16000 in lowest terms is P / Q (441 / 160 at 44.1 kHz): every
    P device frames span exactly Q 16 kHz samples, so each call of whole
    periods maps its input (with the history before it) to its output by
    the same matrix, made once: a Kaiser-windowed sinc (cut-off at 0.4875 x
    the lower rate, as `lowpass`), each row scaled to unit gain at DC.  One
    ``np.dot(..., out=)`` per call: no allocation, and the output comes in
    even blocks (soxr's stream returns bursts of up to 50 ms, which made a
    playback callback run dry).  A call takes ``in_size`` samples and gives
    ``out_size``: as few whole periods as give at least one 128-sample hop
    at 16 kHz (160 samples, 10 ms, at 44.1 kHz).  ``delay``: the group
    delay, ``half_width`` 16 kHz samples.
    """

    def __init__(self, rate: int, up: bool, half_width: int = TAPS_PER_PHASE // 2) -> None:
        g = math.gcd(rate, RATE)
        frames, samples = rate // g, RATE // g
        m = -(-SHIFT // samples)
        self.up = up
        self.delay = half_width
        self.label = f"FIR {frames}:{samples}" if up else f"FIR {samples}:{frames}"
        rate_in, rate_out = (RATE, rate) if up else (rate, RATE)
        self.in_size, self.out_size = (samples * m, frames * m) if up else (frames * m, samples * m)
        span = 2.0 * half_width / RATE  # seconds of input each output sample weighs
        history = math.ceil(span * rate_in)
        cutoff = 0.4875 * min(rate, RATE)  # Hz
        # Output j is at time j / rate_out after the call's first new input; its kernel is centred
        # half the span earlier (the delay), over inputs at (k - history) / rate_in.
        t = (np.arange(self.out_size)[:, None] / rate_out
             - (np.arange(history + self.in_size)[None, :] - history) / rate_in - span / 2)
        x = np.clip(t / (span / 2), -1.0, 1.0)
        kernel = np.sinc(2 * cutoff * t) * np.i0(8.0 * np.sqrt(1.0 - x * x)) * (np.abs(t) <= span / 2)
        self._matrix = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
        self._buf = np.zeros(history + self.in_size, np.float32)
        assert history <= self.in_size  # 72 / 128 of a call's input: the history views never overlap
        self._old, self._older, self._new = self._buf[:history], self._buf[self.in_size:], self._buf[history:]

    def reset(self) -> None:
        self._buf.fill(0.0)

    def process(self, x: np.ndarray, out: np.ndarray) -> None:
        """Convert ``x`` (``in_size`` samples, any stride) into ``out`` (``out_size``, contiguous float32)."""
        np.copyto(self._old, self._older)
        np.copyto(self._new, x)
        np.dot(self._matrix, self._buf, out=out)


def converter(rate: int, up: bool) -> Optional[Polyphase | Rational]:
    """The converter between 16 kHz and ``rate`` (``up``: to the device), or None at 16 kHz."""
    if rate == RATE:
        return None
    factor = integer_factor(rate)
    return Polyphase(factor, up) if factor else Rational(rate, up)


def one_hop_per_call(rate: int) -> bool:
    """Whether a call of `converter` at ``rate`` carries exactly one 128-sample hop at 16 kHz (not at 44.1 kHz).

    A playback written from the capture callback (`dtlnd.push`) needs
    that: it counts its device's queue in hops.
    """
    return rate == RATE or SHIFT % (RATE // math.gcd(rate, RATE)) == 0


def integer_factor(rate: int) -> int:
    """``rate`` / 16000 when that is a whole number from 2 to 6 (`Polyphase`'s case), else 0."""
    q, r = divmod(rate, RATE)
    return q if r == 0 and 2 <= q <= 6 else 0

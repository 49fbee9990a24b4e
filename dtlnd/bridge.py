"""The clock bridge between the capture clock and the playback clock.

The microphone and the loopback run on different crystals, so a fixed
buffer between them slowly fills or drains (0.1 % is 16 samples a second)
until latency grows without bound or every read underruns.  `ClockBridge`
is a single-producer single-consumer ring of 16 kHz samples written by the
input callback and read by the output callback at an adaptive rate:

* while the mean fill stays within ``band`` of the target, the reader
  copies samples one for one (bit-exact: what the engine wrote is what the
  loopback plays);
* once it strays, the reader resamples (4-point cubic interpolation) at a
  rate proportional to the error, clamped to +-0.5 %, until the fill is
  back near the target, then snaps to whole samples again;
* a read that finds samples missing (the writer is late: a deadline miss)
  plays silence for them and moves on, so latency never grows by a late
  block; a fill far off target (a stall, a resumed device) is re-centred.

Everything on the two callback paths works in preallocated arrays.
"""

from __future__ import annotations

import numpy as np

from .constants import RATE


class ClockBridge:
    def __init__(self, target: int, block: int = 128, capacity: int = 1 << 14,
                 out_step: float = 1.0, band: int = 32, time_constant: float = 2.0,
                 max_correction: float = 0.005) -> None:
        """``target``: samples held between writer and reader (the buffering latency).

        ``out_step``: 16 kHz samples per output sample (16000 / output rate).
        ``time_constant``: seconds in which a fill error would be corrected.
        """
        self.target = target
        self.capacity = capacity
        self._buf = np.zeros(capacity, np.float32)
        self._step = out_step
        self._band = band
        self._gain = 1.0 / (RATE * time_constant)
        self._max = max_correction
        self._alpha = 1.0 / 125  # fill average over about one second of reads
        self._ki = self._gain * block / (RATE * 10.0)  # integral time: 10 s
        self._integral = 0.0
        n = 4096
        self._ramp = np.arange(n, dtype=np.float64)
        self._pos = np.zeros(n, np.float64)
        self._floor = np.zeros(n, np.float64)
        self._idx = np.zeros(n, np.int64)
        self._tap_idx = np.zeros(n, np.int64)
        self._frac = np.zeros(n, np.float32)
        self._taps = [np.zeros(n, np.float32) for _ in range(4)]
        self._acc = np.zeros(n, np.float32)
        self._tmp = np.zeros(n, np.float32)
        self._late = np.zeros(n, np.bool_)
        self.reset()

    def reset(self) -> None:
        """Empty the ring; the reader waits for ``target`` samples again."""
        self._buf.fill(0.0)
        self.written = 0
        self.read_pos = 0.0
        self.primed = False
        self.engaged = False
        self.ratio = 1.0
        self.mean_fill = float(self.target)
        self.missed = 0  # reads that found samples missing
        self.resyncs = 0  # fill re-centred after a stall or overflow

    # -- writer (input callback) ----------------------------------------

    def write(self, block: np.ndarray) -> None:
        n = len(block)
        start = self.written % self.capacity
        end = start + n
        if end <= self.capacity:
            self._buf[start:end] = block
        else:
            split = self.capacity - start
            self._buf[start:] = block[:split]
            self._buf[: n - split] = block[split:]
        self.written += n

    # -- reader (output callback) ---------------------------------------

    @property
    def fill(self) -> float:
        return self.written - self.read_pos

    def read(self, out: np.ndarray) -> None:
        """Fill ``out`` with the next samples at the current adaptive rate."""
        n = len(out)
        w = self.written
        if not self.primed:
            if w < self.target:
                out.fill(0.0)
                return
            self.primed = True
            self.read_pos = float(w - self.target)
        fill = w - self.read_pos
        if fill > self.capacity - 2 * n or fill < -self.target - 4 * n:
            # The writer stalled and came back, or the reader did: re-centre.
            self.read_pos = float(w - self.target)
            self.mean_fill = fill = float(self.target)
            self.resyncs += 1
        self.mean_fill += self._alpha * (fill - self.mean_fill)
        self._control()
        step = self._step * self.ratio
        pos = self.read_pos
        if step == 1.0 and pos == int(pos):
            self._copy(out, int(pos), w)
        else:
            self._interpolate(out, pos, step, w)
        self.read_pos = pos + n * step

    def _control(self) -> None:
        """PI control of the read rate on the mean fill error, with a dead band.

        The integral learns the clocks' real ratio, so under steady drift the
        fill settles on the target; the loop lets go (exact copying again)
        only when both the error and the learned drift are negligible.
        """
        err = self.mean_fill - self.target
        if not self.engaged:
            if abs(err) <= self._band:
                return
            self.engaged = True
            self._integral = 0.0
        self._integral += err * self._ki
        self._integral = max(-self._max, min(self._max, self._integral))
        correction = err * self._gain + self._integral
        if abs(err) < self._band / 4 and abs(self._integral) < 2e-5:
            self.engaged = False
            self.ratio = 1.0
            self.read_pos = float(round(self.read_pos))
            return
        self.ratio = 1.0 + max(-self._max, min(self._max, correction))

    def _copy(self, out: np.ndarray, start: int, w: int) -> None:
        n = len(out)
        idx = self._idx[:n]
        np.add(self._ramp[:n], start, out=self._pos[:n])
        np.copyto(idx, self._pos[:n], casting="unsafe")
        np.take(self._buf, idx, out=out, mode="wrap")
        if start + n > w:
            self._silence_missing(out, idx, w)

    def _interpolate(self, out: np.ndarray, pos: float, step: float, w: int) -> None:
        """Catmull-Rom interpolation at ``pos + step * i``; rare, only while correcting drift."""
        n = len(out)
        p, fl, idx, tap_idx = self._pos[:n], self._floor[:n], self._idx[:n], self._tap_idx[:n]
        f, acc, tmp = self._frac[:n], self._acc[:n], self._tmp[:n]
        np.multiply(self._ramp[:n], step, out=p)
        np.add(p, pos, out=p)
        np.floor(p, out=fl)
        np.copyto(idx, fl, casting="unsafe")
        np.subtract(p, fl, out=p)
        np.copyto(f, p, casting="unsafe")
        xm1, x0, x1, x2 = (t[:n] for t in self._taps)
        for tap, offset in zip((xm1, x0, x1, x2), (-1, 0, 1, 2)):
            np.add(idx, offset, out=tap_idx)
            np.take(self._buf, tap_idx, out=tap, mode="wrap")
        # y = ((a f + b) f + c) f + x0 with
        # a = (-xm1 + 3 x0 - 3 x1 + x2) / 2, b = xm1 - 5/2 x0 + 2 x1 - x2 / 2, c = (x1 - xm1) / 2
        np.subtract(x0, x1, out=acc)
        np.multiply(acc, 3.0, out=acc)
        np.add(acc, x2, out=acc)
        np.subtract(acc, xm1, out=acc)
        np.multiply(acc, 0.5, out=acc)
        np.multiply(acc, f, out=acc)
        for coef, x in ((1.0, xm1), (-2.5, x0), (2.0, x1), (-0.5, x2)):
            np.multiply(x, coef, out=tmp)
            np.add(acc, tmp, out=acc)
        np.multiply(acc, f, out=acc)
        np.subtract(x1, xm1, out=tmp)
        np.multiply(tmp, 0.5, out=tmp)
        np.add(acc, tmp, out=acc)
        np.multiply(acc, f, out=acc)
        np.add(acc, x0, out=out)
        if idx[n - 1] + 2 >= w:
            np.add(idx, 2, out=tap_idx)
            self._silence_missing(out, tap_idx, w)

    def _silence_missing(self, out: np.ndarray, idx: np.ndarray, limit: int) -> None:
        late = self._late[: len(out)]
        np.greater_equal(idx, limit, out=late)
        out[late] = 0.0
        self.missed += 1

    @property
    def latency_samples(self) -> float:
        """Mean delay through the ring, in 16 kHz samples."""
        return self.mean_fill

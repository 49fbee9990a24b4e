"""The clock bridge between the capture clock and the playback clock.

The microphone and the loopback run on different crystals, so a fixed
buffer between them slowly fills or drains (0.1 % is 16 samples a second)
until latency grows without bound or every read underruns.  `ClockBridge`
is a single-producer single-consumer ring of 16 kHz samples, written by the
input callback (`write`) and read by the output callback (`read`):

* After priming, the reader learns over half a second the fill it sees on
  average (its *home*: the target plus the two callbacks' phase offset)
  and from then on judges the fill against that, not against the nominal
  target, so a constant offset is never "corrected".
* While the one-second mean fill stays within a quarter block of home,
  the reader copies samples one for one: on one clock, or on two that agree,
  what the engine wrote is exactly what the loopback plays.  Each read
  moves that mean by at most one block / 125, so late callbacks (a read
  that finds the fill a block or more off) cannot push it out of the band.
* A step in the fill (a stall or an xrun on one side, a burst) shows as a
  fast (~60 ms) mean of the fill leaving the slow one by more than 3/4 of
  a block and staying away for 16 reads (~130 ms); slow drift cannot do
  that (0.1 % puts them 16 samples apart), a late callback does not last.
  It is undone at once by dropping or repeating whole 128-sample blocks of
  the ring, counted in ``stats.dropped`` / ``stats.inserted``, so the fill
  is back within half a block of the target in well under a second, with
  no resampling; home is then learned again.  A bridge made with ``slew``
  undoes steps of up to that many blocks by resampling instead, at
  `SLEW_RATE` (a block in 0.4 s), counted in ``stats.slewed``: for a
  reader that sees its fill in whole blocks (`dtlnd.push`), where a
  one-block step is also what drift looks like, and nothing is dropped.
* Slow drift (two independent clocks, the normal case on real hardware)
  takes the mean fill out of that band gradually; then the reader
  resamples (4-point Catmull-Rom interpolation) at a rate set by a PI loop
  on the mean fill error, clamped to +-0.5 %.  The integral learns the
  clocks' ratio, so under real drift this stays engaged for good; it lets
  go (exact copying again) only when error and learned drift are both
  negligible.  Cubic interpolation is good enough for a ratio within
  0.5 % of 1 (its images fold back within a few Hz of the tone); it is not
  used for sample-rate conversion (see `dtlnd.audio`).
* A read that finds samples missing (the writer is late: a deadline miss)
  plays silence for them, counted in ``stats.missed``.  A fill beyond the
  ring (a stall of a second or more) is re-centred on the target,
  counted in ``stats.resyncs``.

Callback duties: `write` and `read` run on the two audio threads, one
writer and one reader, without locks.  They work only in arrays made in
``__init__`` (no allocation), take no lock, never block, never log and
raise only on a programming error; counters are plain integers in the
shared `BlockStats`, each with this bridge as its single writer.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .constants import RATE, SHIFT
from .measure import BlockStats

#: How far the read rate leaves 1 while a step is slewed away: a block in 0.4 s, the delay's detour
#: short next to the 2 s a delay estimate averages over.  The interpolation's error is no louder than at
#: 0.5 % (the rate moves only where its images fall), and 2 % is a third of a semitone for 0.4 s.
SLEW_RATE = 0.02


class ClockBridge:
    def __init__(self, target: int, block: int = SHIFT, capacity: int = 1 << 14,
                 out_step: float = 1.0, time_constant: float = 1.0, max_correction: float = 0.005,
                 stats: Optional[BlockStats] = None, max_read: int = 4096, slew: int = 0,
                 write_size: int = SHIFT) -> None:
        """``target``: samples held between writer and reader (the buffering latency).

        ``out_step``: 16 kHz samples per output sample (16000 / output rate).
        ``time_constant``: seconds in which a fill error would be corrected.
        ``stats``: where the counters go (a fresh `BlockStats` if none).
        ``max_read``: the largest ``out`` a read may be given.
        ``slew``: steps of up to this many blocks are resampled away, not undone by whole blocks.
        ``write_size``: the samples a writer's call brings on average (a block; 160 at 44.1 kHz, in
        calls of one or two blocks), how far the writer can be by the time of a read.
        """
        self.target = target
        self.block = block
        self.capacity = capacity
        self.stats = stats if stats is not None else BlockStats(size=1)
        self._buf = np.zeros(capacity, np.float32)
        self._step = out_step
        self._band = block // 4  # the mean fill may wander this far from home before resampling
        self._step_size = block // 2  # the fast mean this far from the slow one is a step, not drift
        self._slew_blocks = slew
        self._write_size = write_size
        self._hold = 16  # reads a step must last before it is undone (jitter and bursts last less)
        self._settle = RATE // 2  # 16 kHz samples read while home is learned
        self._gain = 1.0 / (RATE * time_constant)
        self._max = max_correction
        self._alpha = 1.0 / 125  # mean fill over about one second of 8 ms reads
        self._alpha_fast = 1.0 / 8  # and over about 60 ms, to see steps
        self._ki = self._gain * block / (RATE * 10.0)  # integral time: 10 s
        n = max_read
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
        self._t_write = 0
        self.read_pos = 0.0
        self.primed = False
        self.engaged = False
        self.ratio = 1.0
        self._integral = 0.0
        self.home = float(self.target)
        self._home0: Optional[float] = None
        self.mean_fill = self.fast_fill = float(self.target)
        self.fill_seen = float(self.target)  # the last read's fill, corrected for the writer's phase
        #: 16 kHz samples the reader holds downstream beyond their usual level, set before each read and
        #: counted in the fill it steers: `dtlnd.push` reads only when the playback device has room, and
        #: sets its queue's deviation from one period short of full; 0 for a reader whose buffer is kept full
        self.held = 0.0
        self.mean_ahead = 0.0  # the mean of that correction
        self._settled = 0.0  # 16 kHz samples read since priming, up to ``_settle``
        self._settle_sum = 0.0
        self._settle_ahead = 0.0  # the writer's phase in that sum
        self._settle_reads = 0
        self._ahead = 0
        self._off_reads = 0  # consecutive reads with the fast fill off home
        self._off_sum = 0.0
        self._slew_to = 0.0  # while slewing: the fill it slews to
        self._slew_dir = 0  # +1 reading faster, -1 slower, 0 not slewing
        st = self.stats
        self._base = (st.missed, st.resyncs, st.dropped, st.inserted)

    # This bridge's share of the shared counters (since `reset`).
    @property
    def missed(self) -> int:
        return self.stats.missed - self._base[0]

    @property
    def resyncs(self) -> int:
        return self.stats.resyncs - self._base[1]

    @property
    def dropped(self) -> int:
        return self.stats.dropped - self._base[2]

    @property
    def inserted(self) -> int:
        return self.stats.inserted - self._base[3]

    # -- writer (input callback) ----------------------------------------

    def write(self, block: np.ndarray, now_ns: Optional[int] = None) -> None:
        """Append ``block``; ``now_ns``: the monotonic time of this write (default: now)."""
        self._t_write = time.perf_counter_ns() if now_ns is None else now_ns
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

    def read(self, out: np.ndarray, now_ns: Optional[int] = None) -> None:
        """Fill ``out`` with the next samples (one for one, or resampled while correcting drift).

        ``now_ns``: the monotonic time of this read (default: now).
        """
        now = time.perf_counter_ns() if now_ns is None else now_ns
        n = len(out)
        w = self.written
        if not self.primed:
            if w < self.target:
                out.fill(0.0)
                return
            self.primed = True
            self.read_pos = float(w - self.target)
        fill = w - self.read_pos
        if fill > self.capacity - 2 * n or fill < -self.capacity // 2:
            # Beyond anything a block step is for (a stall of a second or more): start afresh.
            self.read_pos = float(w - self.target)
            self.mean_fill = self.fast_fill = self.home = float(self.target)
            self._home0 = None
            self._settled = self._settle_sum = self._settle_ahead = 0.0
            self._settle_reads = 0
            self._off_reads = 0
            self._slew_dir = 0
            self.ratio = 1.0
            self.stats.resyncs += 1
        else:
            # Where the writer is by now (at most a call on): the fill then does not depend on which
            # callback of a cycle runs first, which flips at random on one clock.
            ahead = min(self._write_size, max(0, (now - self._t_write) * RATE // 1_000_000_000))
            self.fill_seen = fill + ahead + self.held
            self._ahead = ahead
            self.mean_ahead += self._alpha * (ahead - self.mean_ahead)
            self._track(self.fill_seen, n * self._step)
        step = self._step * self.ratio
        pos = self.read_pos
        if step == 1.0 and pos == int(pos):
            self._copy(out, int(pos), self.written)
        else:
            self._interpolate(out, pos, step, self.written)
        self.read_pos = pos + n * step

    def _track(self, fill: float, samples: float) -> None:
        """Learn home, undo steps by whole blocks, and steer the read rate on slow drift."""
        # A late callback is one read far off: clamped, it moves the mean by a quarter sample at most.
        lim = self.block / 4
        dev = max(-lim, min(lim, fill - self.mean_fill))
        self.mean_fill += self._alpha * dev
        self.fast_fill += self._alpha_fast * (fill - self.fast_fill)
        if self._slew_dir:
            self._slewing(fill)
            return
        if self._settled < self._settle:
            self._learn_home(fill, samples)
            return
        # A step: the fast mean leaves the slow one (which moves a sample per read at most) and stays away.
        # Counted once the fill has settled near the fast mean: not while it still moves (the stall itself).
        if abs(self.fast_fill - self.mean_fill) <= self._step_size or abs(fill - self.fast_fill) > self._step_size:
            self._off_reads, self._off_sum = 0, 0.0
        else:
            self._off_reads += 1
            self._off_sum += fill
            if self._off_reads >= self._hold:
                self._undo_step(self._off_sum / self._off_reads)
                return
        self._control()

    def _undo_step(self, fill: float) -> None:
        """Back to the first home by whole blocks (none if within half a block), then learn home anew.

        Learned anew: the callbacks' phase may have moved by a fraction of a
        block.  Not for a bridge that slews (a reader that sees its fill in
        whole blocks, right after the write): it has no such phase, so its
        home stays, and a step is slewed back to it.
        """
        k = round((fill - (self.home if self._home0 is None else self._home0)) / self.block)
        self.mean_fill = self.fast_fill = fill
        self._off_reads, self._off_sum = 0, 0.0
        if k and abs(k) <= self._slew_blocks:
            self._slew_to = self.home
            self._slew_dir = 1 if k > 0 else -1
            self.engaged = True
            self.ratio = 1.0 + self._slew_dir * SLEW_RATE
            self.stats.slewed += 1
            return
        if k:
            self._shift(k)
        if self._slew_blocks:
            return
        self._settled = self._settle_sum = self._settle_ahead = 0.0
        self._settle_reads = 0

    def _slewing(self, fill: float) -> None:
        """Read at `SLEW_RATE` until the fill is back home.

        A fill that moves the other way past home (drift's next block, seen
        during the slew) ends it too; one that runs more than a block and a
        half beyond it (a bigger step) is left to the step rule.
        """
        past = (fill - self._slew_to) * self._slew_dir
        if 0.0 < past <= self.block + self.block // 2:
            return
        self._slew_dir = 0
        self.engaged = False
        self.ratio = 1.0
        self.read_pos = float(round(self.read_pos))
        self.mean_fill = self.fast_fill = fill

    def _learn_home(self, fill: float, samples: float) -> None:
        """Average the fill over half a second: home is where it sits on one clock."""
        self._settled += samples
        self._settle_sum += fill
        self._settle_ahead += self._ahead
        self._settle_reads += 1
        if self._settled < self._settle:
            return
        home = self._settle_sum / self._settle_reads
        if self._home0 is None:
            # The fill priming gave, less the callbacks' phase; more than 1.5 blocks off the
            # target it is a start-up burst: back to the target by whole blocks first.
            off = home - self._settle_ahead / self._settle_reads - self.target
            k0 = round(off / self.block) if abs(off) > self.block + self.block // 2 else 0
            self._home0 = home - k0 * self.block
        k = round((home - self._home0) / self.block)
        self.home = home - k * self.block
        self.mean_fill = self.fast_fill = home
        if k:  # what a step's undoing left over (the fill was still moving)
            self._shift(k)

    def _shift(self, k: int) -> None:
        """Drop (k > 0) or repeat (k < 0) ``|k|`` whole blocks: the fill moves by ``k`` blocks."""
        d = k * self.block
        self.read_pos += d
        self.mean_fill -= d
        self.fast_fill -= d
        if k > 0:
            self.stats.dropped += k
        else:
            self.stats.inserted -= k

    def _control(self) -> None:
        """PI control of the read rate on the mean fill error, with a dead band of a quarter block.

        The integral learns the clocks' real ratio, so under steady drift the
        fill settles on home; the loop lets go (exact copying again) only
        when both the error and the learned drift are negligible.
        """
        err = self.mean_fill - self.home
        if not self.engaged:
            if abs(err) <= self._band:
                return
            self.engaged = True
            self._integral = 0.0
        self._integral += err * self._ki
        self._integral = max(-self._max, min(self._max, self._integral))
        correction = err * self._gain + self._integral
        if abs(err) < self._band / 8 and abs(self._integral) < 2e-5:
            self.engaged = False
            self.ratio = 1.0
            self.read_pos = float(round(self.read_pos))
            return
        self.ratio = 1.0 + max(-self._max, min(self._max, correction))


    def _copy(self, out: np.ndarray, start: int, w: int) -> None:
        n = len(out)
        at = start % self.capacity
        if at + n <= self.capacity and start + n <= w:  # the usual read: one slice of the ring, all written
            np.copyto(out, self._buf[at:at + n])
            return
        idx = self._idx[:n]
        np.add(self._ramp[:n], start, out=self._pos[:n])
        np.copyto(idx, self._pos[:n], casting="unsafe")
        np.take(self._buf, idx, out=out, mode="wrap")
        if start + n > w:
            self._silence_missing(out, idx, w)

    def _interpolate(self, out: np.ndarray, pos: float, step: float, w: int) -> None:
        """Catmull-Rom interpolation at ``pos + step * i``: the normal path on two independent clocks."""
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
        np.copyto(out, 0.0, where=late)
        self.stats.missed += 1

    @property
    def latency_samples(self) -> float:
        """Mean delay through the ring, in 16 kHz samples.

        The samples held at a read, without the phase correction the
        control uses: the time since the last write is already in the
        input side's one-period figure (the end-to-end delay on the rig,
        cross-correlated, agrees with this one).  With ``held``, it includes
        the downstream queue's mean deviation from its usual level.
        """
        return self.mean_fill - self.mean_ahead

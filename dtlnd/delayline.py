"""Reference alignment on the audio path: delay lines, the estimator's feed, and its worker.

`AlignedProcessor` wraps an echo-cancelling hop processor.  Per hop it
writes the raw microphone and reference into whole-hop delay lines and
hands the model views of the delayed hops; the lines' 2 s of raw input are
also the estimator's feed.  Per hop that is two copies (four ufuncs while a
change crossfades) into preallocated arrays, with indices kept below 257
(CPython's cached ints): it allocates nothing, never blocks, never logs.

The estimator (`Aligner`) runs in a worker thread: every 0.25 s it takes the
new hops from the delay lines, decimates them (soxr) and, every 0.5 s, runs
`dtlnd.align.estimate` on the last 2 s.  When the `Tracker` accepts a new
lag it sets the delay lines' targets; the audio path applies a target at
its next hop with a one-hop (8 ms) crossfade, so a change never clicks.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Optional, Union, cast

import numpy as np

from . import align
from .align import EST_RATE, RESET_STEP_HOPS, STEP_S, WINDOW_S, Tracker, ms_to_samples, samples_to_ms
from .constants import RATE, SHIFT
from .hop import HopProcessor

log = logging.getLogger("dtlnd")

#: Seconds between the worker's looks at the delay lines' raw input.
POLL_S = 0.25
#: Longest delay, in hops (2 s); slots per delay line, one more.  Indices stay CPython cached ints (< 257).
MAX_HOPS = 250
SIZE = MAX_HOPS + 1
#: Seconds of raw input the delay lines hold: the worker must look more often than this.
RING_S = SIZE * SHIFT / RATE


def _hops(ms: float) -> int:
    return round(ms_to_samples(ms) / SHIFT)


class HopDelay:
    """A delay of whole hops on a ring of `SIZE` preallocated hop slots.

    ``target`` may be set from another thread; `push` applies it at the next
    hop, crossfading the old and the new read position over that hop.  The
    ring also keeps the last 2 s of raw input for the estimator (`read`):
    nothing is copied twice on the audio path.  Indices stay below 257
    (CPython's cached ints), so `push` allocates nothing.
    """

    def __init__(self, max_hops: int) -> None:
        if not 0 <= max_hops <= MAX_HOPS:
            raise ValueError(f"delay line of {max_hops} hops: at most {MAX_HOPS}")
        self.max_hops = max_hops
        self.size = SIZE
        self._buf = np.zeros((SIZE, SHIFT), np.float32)
        self._rows = list(self._buf)
        #: the slot written next; the reader tells from it how many hops came since its last look
        self.position = 0
        self.generation = 0  # bumped by `clear`: the reader starts over
        self.hops = 0
        self.target = 0
        self._comp = SIZE  # SIZE - hops: the read index without a negative intermediate
        ramp = ((np.arange(SHIFT) + 0.5) / SHIFT).astype(np.float32)
        self._fade_in, self._fade_out = ramp, (1.0 - ramp).astype(np.float32)
        self._tmp = np.zeros(SHIFT, np.float32)
        self._out = np.zeros(SHIFT, np.float32)

    def push(self, hop: np.ndarray) -> np.ndarray:
        """Write one hop in; return the hop from ``hops`` ago (a view: use it before the next push)."""
        rows, w, h = self._rows, self.position, self.hops
        np.copyto(rows[w], hop)
        r = w - h if w >= h else w + self._comp
        nxt = w + 1
        self.position = 0 if nxt == SIZE else nxt
        t = self.target
        if t == h:
            return rows[r]
        r2 = w - t if w >= t else w + (SIZE - t)
        out = self._out
        np.multiply(rows[r], self._fade_out, out)
        np.multiply(rows[r2], self._fade_in, self._tmp)
        np.add(out, self._tmp, out)
        self.hops = t
        self._comp = SIZE - t
        return out

    def set(self, hops: int) -> None:
        """Jump to ``hops`` at once (before streaming starts)."""
        if not 0 <= hops <= self.max_hops:
            raise ValueError(f"delay of {hops} hops on a line of {self.max_hops}")
        self.hops = self.target = hops
        self._comp = SIZE - hops

    def read(self, start: int, count: int) -> np.ndarray:
        """A copy of ``count`` raw hops from slot ``start`` on, as one signal."""
        return self._buf[np.arange(start, start + count) % SIZE].ravel()

    def clear(self) -> None:
        """Start over (streams stopped)."""
        self._buf.fill(0.0)
        self.position = 0
        self.generation += 1


def _worker(ref: weakref.ref[Aligner], stop: threading.Event) -> None:
    last = time.monotonic()
    while not stop.wait(POLL_S):
        aligner = ref()
        if aligner is None:
            return
        now = time.monotonic()
        try:
            aligner.poll(overrun=now - last > 0.8 * RING_S)
        except Exception:  # a bug here must not end echo cancellation: keep the last alignment
            log.exception("reference alignment: the estimator failed; keeping the current alignment")
            return
        last = now
        del aligner


class _Shifts:
    """The applied shifts, read off the delay lines' targets (what the next hop uses)."""

    far_line: HopDelay
    mic_line: HopDelay

    @property
    def applied_ms(self) -> float:
        return samples_to_ms(self.far_line.target * SHIFT)

    @property
    def mic_delay_ms(self) -> float:
        return samples_to_ms(self.mic_line.target * SHIFT)

    def _mic_text(self) -> str:
        return f", mic +{self.mic_delay_ms:.0f} ms (latency)" if self.mic_line.target else ""


class Aligner(_Shifts):
    """The estimator worker: delay lines' raw input -> decimated window -> `Tracker` -> their targets.

    Also what ``processor.alignment`` reports: ``lag_ms``, ``applied_ms``,
    ``mic_delay_ms``, ``confidence``, ``state``, ``cpu_per_s``, `describe`.
    """

    def __init__(self, far_line: HopDelay, mic_line: HopDelay, lead_ms: float, max_ms: float) -> None:
        self.far_line, self.mic_line = far_line, mic_line
        self.tracker = Tracker(lead_ms, max_ms)
        self._win = int(WINDOW_S * EST_RATE)
        self._step = int(STEP_S * EST_RATE)
        self.cpu_s = 0.0
        self.audio_s = 0.0
        self.warned: list[str] = []
        self._quiet = {"constant": 0.0, "silent": 0.0, "uncorrelated": 0.0}
        self._restart()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _restart(self) -> None:
        import soxr

        self._gen = self.mic_line.generation
        self._seen = 0
        self._dec = soxr.ResampleStream(RATE, EST_RATE, 2, dtype="float32", quality="HQ")
        self._buf = np.zeros((0, 2), np.float32)
        self._since = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=_worker, args=(weakref.ref(self), self._stop),
                                        name="dtlnd-align", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()

    # -- the worker's round ------------------------------------------------------

    def poll(self, overrun: bool = False) -> None:
        """Take the hops written since the last round; estimate every `STEP_S` of them.

        ``overrun``: the last round was so long ago that the lines may have
        wrapped: start over from what they hold.
        """
        t0 = time.thread_time()
        if self.mic_line.generation != self._gen:
            self._restart()
        pos, size = self.mic_line.position, SIZE  # both lines are written in the same hop
        count = (pos - self._seen) % size
        if overrun:
            self._restart()
            count = size - 8  # 8 hops of margin from the writer
        if count:
            first = (pos - count) % size
            mic, far = self.mic_line.read(first, count), self.far_line.read(first, count)
            self._seen = pos
            if not (np.isfinite(mic).all() and np.isfinite(far).all()):  # NaN would blank every window holding it
                mic, far = (np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in (mic, far))
            self._watch_reference(mic, far)
            time.sleep(0)  # let the audio thread have the GIL between steps (CPython forces it only every 5 ms)
            dec = self._dec.resample_chunk(np.stack([mic, far], axis=1))
            self._buf = np.concatenate([self._buf, dec])[-self._win:]
            self._since += len(dec)
            self.audio_s += len(mic) / RATE
            if self._since >= self._step and len(self._buf) >= self._win:
                self._since = 0
                time.sleep(0)
                self._estimate()
        self.cpu_s += time.thread_time() - t0

    def _estimate(self) -> None:
        tr = self.tracker
        est = align.estimate(self._buf[:, 0], self._buf[:, 1], tr.min_lag, tr.max_lag)
        if tr.update(est) is not None:
            self.far_line.target = tr.far_hops
            self.mic_line.target = tr.mic_hops
            log.info("reference alignment: %s", self.describe())
        both = est.far_db >= align.FAR_ACTIVE_DB and est.mic_db >= align.MIC_ACTIVE_DB
        q = self._quiet
        q["uncorrelated"] = q["uncorrelated"] + STEP_S if both and not est.usable else 0.0
        if q["uncorrelated"] >= align.WARN_AFTER_S:
            self._warn("uncorrelated", f"the far-end reference is playing but the microphone does not hear it "
                       f"({q['uncorrelated']:.0f} s with no echo found): check ref_channel, that it carries "
                       "what the speaker plays, and that the speaker is not muted")

    def _watch_reference(self, mic: np.ndarray, far: np.ndarray) -> None:
        """Warn once about a reference that is constant, or silent while the microphone is not."""
        dur = len(mic) / RATE
        q = self._quiet
        mic_on = align.level_db(mic) >= align.MIC_ACTIVE_DB
        q["constant"] = q["constant"] + dur if np.ptp(far) == 0 else 0.0
        # Seconds of microphone activity since the reference was last active (talk has pauses).
        if align.level_db(far) >= align.FAR_ACTIVE_DB:
            q["silent"] = 0.0
        elif mic_on:
            q["silent"] += dur
        if q["constant"] >= WINDOW_S:
            self._warn("constant", f"the far-end reference has been constant (value {far[-1]:.3g}) for "
                       f"{q['constant']:.0f} s: wrong ref_channel, or nothing connected; "
                       "the microphone passes through echo cancellation as it is")
        elif q["silent"] >= align.WARN_AFTER_S:
            self._warn("silent", f"the far-end reference has been silent for {q['silent']:.0f} s while the "
                       "microphone is active: nothing is playing, or ref_channel is wrong; "
                       "there is no echo path to align")

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.append(kind)
            log.warning("reference alignment: %s", message)

    # -- what it reports ----------------------------------------------------------

    @property
    def lag_ms(self) -> Optional[float]:
        lag = self.tracker.lag
        return None if lag is None else samples_to_ms(lag)

    @property
    def confidence(self) -> float:
        last = self.tracker.last
        return 0.0 if last is None else last.confidence

    @property
    def state(self) -> str:
        return self.tracker.state

    @property
    def cpu_per_s(self) -> float:
        """Estimator CPU seconds per second of audio analysed."""
        return self.cpu_s / self.audio_s if self.audio_s else 0.0

    def describe(self) -> str:
        lag = "lag ?" if self.lag_ms is None else f"lag {self.lag_ms:.1f} ms"
        return (f"align {self.state}: {lag} (confidence {self.confidence:.1f}), reference "
                f"+{self.applied_ms:.0f} ms{self._mic_text()}")


class FixedAlignment(_Shifts):
    """``ref_delay: MS``: the same report for a fixed shift."""

    state = "fixed"
    lag_ms = None
    confidence = 0.0
    cpu_per_s = 0.0

    def __init__(self, far_line: HopDelay, mic_line: HopDelay) -> None:
        self.far_line, self.mic_line = far_line, mic_line

    def describe(self) -> str:
        return f"align fixed: reference +{self.applied_ms:.0f} ms{self._mic_text()}"

    def close(self) -> None:
        pass


def echo_stage(processor: Any) -> Any:
    """The echo canceller inside ``processor``: itself, a chain's first stage, or what a wrapper wraps."""
    p = processor
    for _ in range(8):
        if hasattr(p, "pair"):
            return p
        stages = getattr(p, "stages", None)
        p = stages[0] if stages else getattr(p, "inner", None)
        if p is None:
            break
    raise TypeError(f"{type(processor).__name__} holds no model pair to align the reference for")


class AlignedProcessor:
    """An echo-cancelling hop processor behind reference and microphone delay lines.

    Anything else asked of it (label, runtime, fault counters) is the inner
    processor's.
    """

    channels = 2

    def __init__(self, inner: HopProcessor, ref_delay: Union[str, float], ref_delay_max: float, ref_lead: float,
                 start: bool = True) -> None:
        self.inner = inner
        self.stages: tuple[Any, ...] = getattr(inner, "stages", (inner,))
        self.fft_backend = getattr(echo_stage(inner), "fft_backend", None)
        self.far_line = HopDelay(_hops(ref_delay_max))
        self.mic_line = HopDelay(_hops(align.MIC_DELAY_MAX_MS))
        self._inner_hop = inner.process_hop
        self.alignment: Union[Aligner, FixedAlignment]
        if ref_delay == "auto":
            self.alignment = Aligner(self.far_line, self.mic_line, ref_lead, ref_delay_max)
            if start:
                self.alignment.start()
        else:
            shift = _hops(float(ref_delay))
            self.far_line.set(max(shift, 0))
            self.mic_line.set(max(-shift, 0))
            self.alignment = FixedAlignment(self.far_line, self.mic_line)
        self.process_hop = self._build_hop()

    def _build_hop(self):
        mic_line, far_line = self.mic_line, self.far_line
        mic_push, far_push, inner = mic_line.push, far_line.push, self._inner_hop
        # A big change zeroes the echo canceller's LSTM states (windows and
        # overlap-add stay, so the output does not jump).  Measured: after a
        # 296 ms shift the residual is under -60 dBFS 3 s in with the reset,
        # 6 s without; after a 48 or 72 ms one the reset costs 3-5 dB.
        reset_states = echo_stage(self.inner).pair.reset

        def process_hop(mic: np.ndarray, far: np.ndarray, out: np.ndarray) -> None:
            if mic_line.target != mic_line.hops or far_line.target != far_line.hops:
                step = abs(far_line.target - far_line.hops) + abs(mic_line.target - mic_line.hops)
                if step > RESET_STEP_HOPS:
                    reset_states()
            inner(mic_push(mic), far_push(far), out)
        return process_hop

    @property
    def delay(self) -> int:
        """The inner delay plus the microphone's (it changes when the alignment does)."""
        return self.inner.delay + self.mic_line.hops * SHIFT

    def reset(self) -> None:
        self.inner.reset()
        self.far_line.clear()
        self.mic_line.clear()

    def close(self) -> None:
        self.alignment.close()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def wrap(processor: HopProcessor, mode: str, ref_delay: Union[str, float], ref_delay_max: float,
         ref_lead: float, start: bool = True) -> HopProcessor:
    """``processor`` behind the alignment its settings ask for (``ns`` and ``ref_delay: 0``: unchanged)."""
    if mode == "ns" or ref_delay == 0 or (ref_delay != "auto" and _hops(float(ref_delay)) == 0):
        return processor
    return cast(HopProcessor, AlignedProcessor(processor, ref_delay, ref_delay_max, ref_lead, start))

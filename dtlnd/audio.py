"""Capture -> engine -> clock bridge -> playback, on two PortAudio streams.

The input and output devices have different clocks, so they get separate
streams joined by a `ClockBridge` rather than one duplex stream that would
drift into repeating xruns.  Inference runs in the input callback: it is
the lowest latency (no thread hand-off) and ``invoke()`` releases the GIL,
so the output callback is never held up by it.  A block that is not ready
when the output needs it is played as silence and counted (the bridge's
deadline policy).

Both streams come from `dtlnd.streams`: the callbacks get arrays made when
the stream opens and PortAudio's status flags as an int.

Callback duties (what the two callbacks do, and all they do):

* The input callback counts PortAudio's overflow flag, checks the stream
  for lost time (`LostTime`), converts the device rate to 16 kHz when it
  is not 16 kHz, runs the engine on each whole 128-sample hop (one, but for
  rates whose call is not a hop: 160 samples at 44.1 kHz make one or two,
  the rest waits for the next call), writes the results to the bridge and
  records the call's time per 128 samples in the stats ring.
* The output callback counts the underflow flag, reads a call's worth of
  samples from the bridge (a hop; 160 at 44.1 kHz), converts 16 kHz to the
  device rate when needed, scales to the output format (round, clip) and
  copies it to every output channel.
* Neither logs, takes a lock, waits, or lets an exception out: an
  exception is counted in ``stats.callback_errors`` and kept in
  ``stats.last_error`` for the supervisor, and the output plays silence.
  Counters are plain integers, each with one writer.
* They allocate no array, at any rate (`dtlnd.resample.converter`): every
  buffer is made in ``__init__`` and numpy writes into it with ``out=``
  (tests/test_rt_alloc.py counts numpy buffers at every C call, at 16, 48
  and 44.1 kHz).  They still make small Python objects: views of
  ``indata`` and of the buffers, and ints from the clock.
* The first call of each callback asks for SCHED_FIFO for its thread
  (one system call) and stores what happened for the supervisor's log.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from . import devices, resample
from .bridge import ClockBridge
from .config import Settings
from .constants import FORMATS, RATE, SHIFT
from .errors import DeviceError
from .hop import HopProcessor
from .measure import BlockStats, Latency
from .streams import INPUT_OVERFLOW, OUTPUT_UNDERFLOW, open_stream

log = logging.getLogger("dtlnd")


def _set_realtime(priority: int) -> str:
    """Ask SCHED_FIFO for the calling (audio) thread; return what happened, for the log."""
    if priority <= 0:
        return "real-time priority off (rt_priority: 0)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return (f"no real-time priority for the audio threads ({getattr(exc, 'strerror', exc)}): "
                "running at normal priority; allow it with LimitRTPRIO= or an rtprio limit")
    return f"audio threads run SCHED_FIFO priority {priority}"


class LostTime:
    """Input time the stream clock says passed but whose samples never came ("gaps").

    PortAudio flags no overflow when the whole process was stopped (SIGSTOP,
    a VM pause, a stalled JACK client): the capture simply resumes later.
    So each callback compares the monotonic time since the first callback
    with the frames received: their difference (the deficit, in device
    samples) jitters by a callback's lateness and returns when the backlog
    arrives, but a loss raises it for good.  The minimum deficit over each
    window of 32 callbacks (~0.26 s) is the floor; a floor higher than the
    last one by more than half a block, and still that high a window later
    (callbacks held back by load for a whole window come back), is counted
    as lost time (``stats.gap_samples`` in 16 kHz samples, ``stats.gaps``
    times), about half a second after it happened; a further rise that
    starts in the window right after a counted gap is that gap's tail (on
    the rig a 200 ms stall showed as 192 ms, then one block more), added to
    its samples, not counted as another gap.  Half a block, so that
    one lost period (a JACK cycle skipped for the capture) counts: on the
    test rig the floor otherwise moved by 7 samples at most (once 27) in
    two 40 s runs, quiet and beside a CPU hog, and a skipped cycle raised
    it by 128-131.  The floor follows slow drift between the device's
    crystal and the system clock both ways (0.1 % is 4 samples per
    window), so drift is never a gap.
    """

    WINDOW = 32

    def __init__(self, rate: int, stats: BlockStats) -> None:
        self.rate = rate
        self.stats = stats
        self._threshold = rate * SHIFT // (2 * RATE)
        self.reset()

    def reset(self) -> None:
        self._t0 = -1
        self._frames = 0
        self._floor = -1 << 62  # none yet
        self._min = 1 << 62
        self._count = 0
        self._rising = False
        self._after_gap = False  # the last window counted a gap
        self._tail = False  # the rise being decided began right after a counted gap

    def note(self, now_ns: int, frames: int) -> None:
        """One callback at ``now_ns`` (monotonic) that brought ``frames`` frames."""
        if self._t0 < 0:
            self._t0 = now_ns
        deficit = (now_ns - self._t0) * self.rate // 1_000_000_000 - self._frames
        self._frames += frames
        if deficit < self._min:
            self._min = deficit
        self._count += 1
        if self._count == self.WINDOW:
            self._window_done(self._min)
            self._min = 1 << 62
            self._count = 0

    def _window_done(self, floor: int) -> None:
        """A raised floor is lost time only if the next window's floor is still up (else: late callbacks)."""
        if self._floor == -1 << 62:
            self._floor = floor
            return
        rise = floor - self._floor
        if not self._rising:
            if rise > self._threshold:
                self._rising = True  # decided at the next window
                self._tail = self._after_gap
            else:
                self._floor = floor  # drift, either way
            self._after_gap = False
            return
        self._rising = False
        if rise > self._threshold:
            if not self._tail:  # else the last gap's tail: its samples, not another gap
                self.stats.gaps += 1
            self.stats.gap_samples += rise * RATE // self.rate
            self._after_gap = True
        self._floor = floor


class AudioPipeline:
    """Open (``start``) and close the two streams for one set of settings."""

    #: steps (blocks) the bridge resamples away rather than dropping or repeating blocks (`ClockBridge`'s ``slew``)
    slew_blocks = 0

    def __init__(self, settings: Settings, processor: HopProcessor, stats: BlockStats,
                 on_finished: Optional[Callable[[], None]] = None) -> None:
        """``on_finished``: called (in PortAudio's thread) when either stream ends, so a dead one is seen at once."""
        self.settings = settings
        self.processor = processor
        self.stats = stats
        s = settings
        n_in = s.input_channels
        self.in_dev = devices.resolve(s.input.device, "input")
        self.out_dev = devices.resolve(s.output.device, "output")
        if n_in > self.in_dev.max_input_channels:
            raise DeviceError(f"input.channels {n_in}: device {self.in_dev.name!r} has only "
                              f"{self.in_dev.max_input_channels} input channel(s)")
        self.in_rate = devices.pick_rate(self.in_dev, "input", s.input.rate, n_in)
        self.out_rate = devices.pick_rate(self.out_dev, "output", s.output.rate, s.output.channels)
        self.mic_ch = s.input.channel % n_in
        self.far_ch = s.ref_channel % n_in if processor.channels == 2 else None
        self._lost = LostTime(self.in_rate, stats)
        self._hop_out = np.zeros(SHIFT, np.float32)
        self._down = resample.converter(self.in_rate, up=False)
        self._down_far = resample.converter(self.in_rate, up=False) if self.far_ch is not None else None
        self._up = resample.converter(self.out_rate, up=True)
        for kind, conv, dev, rate, way in (("input", self._down, self.in_dev, self.in_rate, "to"),
                                           ("output", self._up, self.out_dev, self.out_rate, "from")):
            if conv is not None:
                log.info("%s %s runs at %d Hz: resampling %s 16000 Hz in process (%s)",
                         kind, dev.name, rate, way, conv.label)
        # 16 kHz samples per input call: a hop, or (44.1 kHz: 160) whole hops are cut from a queue.
        n16 = self._down.out_size if self._down is not None else SHIFT
        self._mic16 = np.zeros(n16, np.float32)
        self._far16 = np.zeros(n16, np.float32)
        self._queue_mic = np.zeros(n16 + SHIFT, np.float32)
        self._queue_far = np.zeros(n16 + SHIFT, np.float32)
        self._queued = 0
        self._hop_read = np.zeros(self._up.in_size if self._up is not None else SHIFT, np.float32)
        # + half a block: the clocks' phase sweep; + what a call writes beyond a block at most (44.1 kHz:
        # two hops) and reads beyond one (160): a read may come just before such a write.
        target = (self._ring_blocks() * SHIFT + SHIFT // 2 + SHIFT * (-(-n16 // SHIFT) - 1)
                  + len(self._hop_read) - SHIFT)
        self.bridge = ClockBridge(target=target, block=SHIFT, stats=stats, slew=self.slew_blocks, write_size=n16)
        dtype = FORMATS[s.output.format]
        out_block = self._up.out_size if self._up is not None else SHIFT
        in_block = self._down.in_size if self._down is not None else SHIFT
        self._out_hi = np.zeros(out_block, np.float32)
        self._out_scaled = np.zeros(out_block, np.float32)
        self._int_scale = {"int16": 32767.0, "int32": 2147483392.0, "float32": None}[dtype]
        self._int_limits = {"int16": (-32768.0, 32767.0), "int32": (-2147483648.0, 2147483392.0)}.get(dtype, (0, 0))
        self._rt_priority = s.rt_priority
        self._rt = {"input": False, "output": False}
        self.rt_results: list[str] = []
        self._open_streams(n_in, dtype, in_block, out_block, on_finished)
        # Column views made once: outdata is (frames, channels); every channel gets the mono signal.
        self._out_col = self._out_hi[:, None]
        self._scaled_col = self._out_scaled[:, None]

    def _ring_blocks(self) -> int:
        """Whole blocks of slack in the clock bridge (`dtlnd.push` keeps its slack in the device instead)."""
        return self.settings.buffer_blocks

    def _open_streams(self, n_in: int, dtype: str, in_block: int, out_block: int,
                      on_finished: Optional[Callable[[], None]]) -> None:
        """Open the capture and the playback stream (`dtlnd.duplex` opens one duplex stream instead)."""
        s = self.settings
        self.output_stream = self._open_pair(self._input_callback, n_in, in_block, on_finished, lambda: open_stream(
            "output", self._output_callback, device=self.out_dev.index, samplerate=self.out_rate,
            channels=s.output.channels, dtype=dtype, blocksize=out_block, latency=s.latency,
            finished_callback=on_finished))
        self._starts: tuple[tuple[str, devices.Device, Any], ...] = (
            ("output", self.out_dev, self.output_stream), ("input", self.in_dev, self.input_stream))

    def _open_pair(self, input_callback: Callable[..., None], n_in: int, in_block: int,
                   on_finished: Optional[Callable[[], None]], open_output: Callable[[], Any]) -> Any:
        """Open the capture stream with ``input_callback``, then the playback with ``open_output()``; return that.

        Either failing closes what was opened and raises the one-line error
        naming its device.  The caller sets ``_starts`` (output first).
        """
        sd = devices.sd()
        try:
            self.input_stream = open_stream(
                "input", input_callback, device=self.in_dev.index, samplerate=self.in_rate, channels=n_in,
                dtype="float32", blocksize=in_block, latency=self.settings.latency, finished_callback=on_finished)
        except sd.PortAudioError as exc:
            raise devices.open_error("input", self.in_dev, exc) from None
        try:
            output = open_output()
        except sd.PortAudioError as exc:
            self.input_stream.close()
            raise devices.open_error("output", self.out_dev, exc) from None
        except Exception:
            self.input_stream.close()
            raise
        return output

    # -- callbacks ---------------------------------------------------------

    def _realtime(self, side: str) -> None:
        self._rt[side] = True
        self.rt_results.append(_set_realtime(self._rt_priority))

    def _input_callback(self, indata: np.ndarray, frames: int, t: None, status: int) -> None:
        stats = self.stats
        try:
            if status & INPUT_OVERFLOW:
                stats.input_overflows += 1
            if not self._rt["input"]:
                self._realtime("input")
            t0 = time.perf_counter_ns()
            self._lost.note(t0, frames)
            if self._down is not None:
                self._down.process(indata[:, self.mic_ch], self._mic16)
                mic, far = self._mic16, None
                if self._down_far is not None:
                    self._down_far.process(indata[:, self.far_ch], self._far16)
                    far = self._far16
            else:
                mic = indata[:, self.mic_ch]
                far = indata[:, self.far_ch] if self.far_ch is not None else None
            if len(mic) == SHIFT:
                self.processor.process_hop(mic, far, self._hop_out)
                self.bridge.write(self._hop_out, t0)
            else:
                self._hops(mic, far, t0)
            # Per 128 samples: a call of 160 (44.1 kHz) has 10 ms, so it is late only past its period.
            stats.record((time.perf_counter_ns() - t0) * SHIFT // len(mic))
        except Exception as exc:  # never let an exception stop the stream
            stats.callback_errors += 1
            stats.last_error = exc

    def _hops(self, mic: np.ndarray, far: Optional[np.ndarray], t0: int) -> None:
        """Queue a call's 16 kHz samples that are not one hop; run and write every whole hop; keep the rest."""
        n, queued = len(mic), self._queued
        qm, qf = self._queue_mic, self._queue_far
        qm[queued:queued + n] = mic
        if far is not None:
            qf[queued:queued + n] = far
        queued += n
        at = 0
        while queued - at >= SHIFT:
            self.processor.process_hop(qm[at:at + SHIFT], qf[at:at + SHIFT] if far is not None else None,
                                       self._hop_out)
            self.bridge.write(self._hop_out, t0)
            at += SHIFT
        rest = queued - at
        if at and rest:  # rest < a hop <= at: the two ranges do not overlap
            qm[:rest] = qm[at:queued]
            qf[:rest] = qf[at:queued]
        self._queued = rest

    def _output_callback(self, outdata: np.ndarray, frames: int, t: None, status: int) -> None:
        stats = self.stats
        try:
            if status & OUTPUT_UNDERFLOW:
                stats.output_underflows += 1
            if not self._rt["output"]:
                self._realtime("output")
            self._fill_output(outdata)
            stats.outputs += 1
        except Exception as exc:
            outdata.fill(0)
            stats.callback_errors += 1
            stats.last_error = exc

    def _fill_output(self, outdata: np.ndarray) -> None:
        """The bridge's next samples at the device rate, in the output format, into every channel of ``outdata``."""
        buf = self._out_hi
        if self._up is not None:
            self.bridge.read(self._hop_read)
            self._up.process(self._hop_read, buf)
        else:
            self.bridge.read(buf)
        if self._int_scale is None:
            np.copyto(outdata, self._out_col)
        else:
            # Clipped, then rounded straight into outdata: the bounds are whole numbers, so this is
            # rint-then-clip; plain ufuncs, as np.clip's Python wrapper costs more than the work.
            scaled = self._out_scaled
            np.multiply(buf, self._int_scale, out=scaled)
            np.minimum(scaled, self._int_limits[1], out=scaled)
            np.maximum(scaled, self._int_limits[0], out=scaled)
            np.rint(self._scaled_col, out=outdata, casting="unsafe")

    # -- control -------------------------------------------------------------

    def start(self) -> None:
        self.processor.reset()
        self.bridge.reset()
        self._lost.reset()
        self._queued = 0
        for r in (self._down, self._down_far, self._up):
            if r is not None:
                r.reset()
        sd = devices.sd()
        for kind, dev, stream in self._starts:
            try:
                stream.start()
            except sd.PortAudioError as exc:
                self.close()
                raise devices.open_error(kind, dev, exc) from None

    @property
    def active(self) -> bool:
        return bool(self.input_stream.active and self.output_stream.active)

    @property
    def output_blocked(self) -> bool:
        """Whether a stopped output holds up the input as well (`dtlnd.push`); not here, each has its thread."""
        return False

    def close(self, timeout: float = 2.0) -> bool:
        """Stop both streams now (abort: nothing to drain on a live stream); False if the driver blocked it.

        A close can block in the driver: on JACK, after the process was
        stopped (SIGSTOP) while other clients ran, ``snd_pcm_close`` waits on
        the server for good.  After ``timeout`` s the close is left to its
        helper thread and PortAudio is marked wedged (`devices.wedged`), so
        neither a reinitialisation nor the shutdown at exit waits on it too.
        """
        done = threading.Event()

        def run() -> None:
            for stream in dict.fromkeys((self.input_stream, self.output_stream)):  # one, if duplex
                try:
                    stream.abort()
                    stream.close()
                except Exception as exc:
                    log.debug("closing %s: %s", stream, exc)
            done.set()

        threading.Thread(target=run, name="dtlnd-close", daemon=True).start()
        if done.wait(timeout):
            return True
        log.warning("closing the audio streams is blocked in the driver after %.1f s: left behind", timeout)
        devices.wedged()
        return False

    def latency(self) -> Latency:
        """Microphone-to-loopback delay.

        Input counts one period, not PortAudio's input latency: that figure is
        the capture buffer's size, which a sample only waits through when the
        callback falls behind; while it keeps up a sample waits at most one
        period.  Output is PortAudio's figure (the playback buffer is kept
        full), the buffer the bridge's mean fill.  Algorithmic includes the
        rate converters' group delay (36 samples each way for 48 kHz).
        Checked end to end on the test rig, where both match a
        cross-correlation of input and output.
        """
        algorithmic = (self.processor.delay + self._queue_delay()
                       + sum(r.delay for r in (self._down, self._up) if r is not None))
        return Latency(
            algorithmic=1000.0 * algorithmic / RATE,
            input=1000.0 * self.input_stream.blocksize / self.in_rate,
            buffer=1000.0 * self.bridge.latency_samples / RATE,
            output=1000.0 * float(out[1] if isinstance(out := self.output_stream.latency, tuple) else out),
        )

    def _queue_delay(self) -> float:
        """The mean wait of a hop's newest sample in the hop queue, in 16 kHz samples (0 if calls are hops).

        A call brings ``n`` samples (160 at 44.1 kHz); a hop ending inside
        it waits for the call's last sample: (n - gcd(n, 128)) / 2 on average.
        """
        n = len(self._mic16)
        return 0.0 if n == SHIFT else (n - math.gcd(n, SHIFT)) / 2

    def describe(self) -> str:
        s = self.settings
        return (f"input {self.in_dev.name!r} ({s.input_channels} ch at {self.in_rate} Hz, mic ch {self.mic_ch}"
                + (f", reference ch {self.far_ch}" if self.far_ch is not None else "")
                + f") -> output {self.out_dev.name!r} ({s.output.channels} ch {s.output.format} at {self.out_rate} Hz)")

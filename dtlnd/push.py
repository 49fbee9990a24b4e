"""Push playback (``playback: push``, with ``clock: separate``): one audio thread for two clocks.

The capture stream's callback runs the engine as in `dtlnd.audio`, writes
the hop to the clock bridge, and then writes the playback itself: the
playback stream is opened in PortAudio's blocking mode, and the callback
moves whole blocks from the bridge into the device's buffer while the
device has room for them.  Compared with a playback stream of its own
callback, that saves an audio thread's wake-up and its cold caches every
8 ms (0.78-0.87x the CPU of the two callbacks in one alternating run on
the test rig), and 8 ms of delay: the slack against a late capture
callback is the device's buffer (``buffer_blocks`` periods beyond the one
being played), which a late callback drains, rather than a bridge kept
that much fuller.

The two clocks still differ, so the bridge still steers: the pump reads
only when the device has room for a block, so it reads at the playback
clock's pace, and it tells the bridge (`ClockBridge.held`) how far the
device's queue is from its usual level (one period short of full), so the
fill the bridge holds steady is the ring and the device's queue together.
When the ring has no whole block the pump leaves the room for the next
call: the device's queue is lower for a while, and the bridge sees that.

The pump sees the device's queue only in whole periods, so as the clocks'
phases pass each other the fill jumps by a block, which is drift; a JACK
cycle one side missed looks the same.  So the bridge resamples every
one-block step away (`ClockBridge`'s ``slew``: the read rate 2 % off for
0.4 s, counted as slewed), where the two-callback path drops or repeats a
block for a hiccup and resamples drift gently; nothing is dropped or
repeated but for steps of two blocks and more.  Two clocks 0.01 % apart
slew a block every 80 s, and the delay in between drifts by up to that
block.  Since a slew may be a lost cycle, ``--measure`` counts every one
as a fault, so on two clocks a run FAILs once drift makes its first step:
that, and the delay's block of wander, is why push is not the default.

Callback duties: as `dtlnd.audio`'s input and output callbacks, in one
thread; the writes go to the device only when `streams.Writer.room` said
there is room, so they do not wait for the device to play.  A device that
blocks inside the write all the same (a wedged driver, a file plugin
whose reader stopped) holds up the capture too: the supervisor then sees
both sides stop, and `PushPipeline.output_blocked` tells it which side to
name.  An output rate whose period is not one hop at 16 kHz (44.1 kHz:
160 samples, `dtlnd.resample.one_hop_per_call`) gets the playback
callback instead, and the log says so: the pump's fill and steps are
counted in hops.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Optional

import numpy as np

from . import devices, resample
from .audio import AudioPipeline
from .bridge import SLEW_RATE, ClockBridge
from .config import Settings
from .constants import RATE, SHIFT
from .errors import ConfigError
from .hop import HopProcessor
from .measure import BlockStats, Latency
from .streams import OUTPUT_UNDERFLOWED, Writer, open_writer

log = logging.getLogger("dtlnd")

#: Whole blocks the bridge holds beyond its half block of phase: the one just written.
RING_BLOCKS = 1
#: 16 kHz samples a read may need from the ring: one hop, at most `SLEW_RATE` more while slewing a step
#: away, and the interpolation's two samples beyond it.
_READ_NEED = SHIFT + math.ceil(SHIFT * SLEW_RATE) + 2


class PushPipeline(AudioPipeline):
    """Capture stream with a callback, playback stream written from it; same interface as `AudioPipeline`."""

    #: The device's queue moves by whole periods when the two clocks' phases pass each other: a one-block
    #: step may be drift, so it is resampled away, never dropped or repeated.
    slew_blocks = 1

    def __init__(self, settings: Settings, processor: HopProcessor, stats: BlockStats,
                 on_finished: Optional[Callable[[], None]] = None) -> None:
        """Refuse output rates whose period is not one hop before anything is built; then as `AudioPipeline`."""
        s = settings
        devices.resolve(s.input.device, "input")  # first, as in AudioPipeline: with neither, the input is named
        out_rate = devices.pick_rate(devices.resolve(s.output.device, "output"), "output", s.output.rate,
                                     s.output.channels)
        if not resample.one_hop_per_call(out_rate):
            raise ConfigError(f"playback: push: a {out_rate} Hz period is not one 128-sample hop at 16 kHz")
        self._on_finished = on_finished
        self._failed = False
        super().__init__(settings, processor, stats, on_finished)

    def _ring_blocks(self) -> int:
        return RING_BLOCKS

    def _open_streams(self, n_in: int, dtype: str, in_block: int, out_block: int,
                      on_finished: Optional[Callable[[], None]]) -> None:
        """Open the capture stream and the blocking playback stream (called by `AudioPipeline.__init__`)."""
        s = self.settings
        self._rt["output"] = True  # the capture thread writes the playback
        self._writer: Writer = self._open_pair(self._push_callback, n_in, in_block, on_finished, lambda: open_writer(
            device=self.out_dev.index, samplerate=self.out_rate, channels=s.output.channels, dtype=dtype,
            blocksize=out_block, latency=s.buffer_blocks * out_block / self.out_rate))
        self.output_stream = self._writer.stream
        self._starts = (("output", self.out_dev, self.output_stream), ("input", self.in_dev, self.input_stream))
        self._pump = Pump(self.bridge, self._writer, self._fill_output, RATE / self.out_rate, self.stats)

    def _push_callback(self, indata: np.ndarray, frames: int, t: None, status: int) -> None:
        """The capture callback, then as many blocks to the playback as its buffer has room for."""
        self._input_callback(indata, frames, t, status)
        if self._failed:
            return
        try:
            err = self._pump.run()
            if err:
                self._fail(err)
        except Exception as exc:
            self.stats.callback_errors += 1
            self.stats.last_error = exc

    def _fail(self, err: int) -> None:
        """The playback stream broke (the device or server went away): stop writing, wake the supervisor once."""
        if self._failed:
            return
        self._failed = True
        sd = devices.sd()
        self.stats.callback_errors += 1
        self.stats.last_error = sd.PortAudioError(
            f"writing the playback: {sd._ffi.string(sd._lib.Pa_GetErrorText(err)).decode(errors='replace')}", err)
        if self._on_finished is not None:
            self._on_finished()

    @property
    def active(self) -> bool:
        return bool(not self._failed and self.input_stream.active and self.output_stream.active)

    @property
    def output_blocked(self) -> bool:
        """A write to the playback is under way (asked once both sides stopped: it is what holds them up)."""
        return self._pump.writing

    def latency(self) -> Latency:
        """As `AudioPipeline.latency`, less the ring's newest block.

        The read follows the write of a whole block at once, so that block's
        samples wait in the ring for no time, not for the fill they stand
        for (the one-period input figure counts their wait).  The output is
        PortAudio's figure: the device's buffer less one period, the queue
        a pushed block finds.  Checked end to end on the test rig.
        """
        base = super().latency()
        return dataclasses.replace(base, buffer=base.buffer - 1000.0 * SHIFT / RATE)

    def describe(self) -> str:
        return super().describe() + ", playback written from the capture callback (playback: push)"


class Pump:
    """Moves blocks from a clock bridge into a playback buffer while it has room: `PushPipeline`'s rule.

    ``writer``: `streams.Writer`, or anything with its ``room``, ``write``
    and ``data``.  ``fill(data)`` puts the bridge's next block into
    ``data`` (reading the bridge once); ``to16``: 16 kHz samples per device
    frame.  Real-time: `run` allocates nothing, and writes only what the
    buffer has room for (see the module's docstring for a device that
    blocks all the same).
    """

    def __init__(self, bridge: ClockBridge, writer: Any, fill: Callable[[np.ndarray], None], to16: float,
                 stats: BlockStats) -> None:
        self.bridge = bridge
        self.writer = writer
        self.fill = fill
        self.to16 = to16
        self.stats = stats
        self.block = len(writer.data)
        #: True while a write is under way: for seconds only when the device blocks inside it
        self.writing = False

    def run(self) -> int:
        """Write while there is room and the ring has a block; 0, or the PortAudio error that stopped it."""
        writer, bridge, block, stats = self.writer, self.bridge, self.block, self.stats
        room = writer.room()
        if room < 0:
            return room
        while room >= block:
            if bridge.primed and bridge.fill < _READ_NEED:
                return 0  # no whole block yet: the device's queue runs lower until the next call
            bridge.held = (block - room) * self.to16
            self.fill(writer.data)
            self.writing = True
            err = writer.write()
            self.writing = False
            if err == OUTPUT_UNDERFLOWED:
                stats.output_underflows += 1
            elif err:
                return err
            stats.outputs += 1
            room -= block
        return 0

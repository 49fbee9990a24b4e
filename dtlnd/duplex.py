"""Shared-clock mode (``clock: shared``): capture and playback in one duplex PortAudio stream.

When the input and the output run on one clock (one card, or snd-aloop
clocked from the capture card by its ``timer_source`` option) they cannot
drift apart, so no clock bridge is needed: one callback gets the input
block and fills the output block with the engine's output of that same
hop.  That saves the bridge's buffer (20 ms by default) and one callback
thread's wake-up per hop.

`DuplexPipeline` is an `AudioPipeline` whose two streams are one: the
per-block work (lost-time check, FIR resampling, engine call, format
conversion, counters) is the parent's two callbacks, called back to back
from the duplex callback, with a `DirectBridge` between them: it holds
one hop.  For rates whose period is not one hop at 16 kHz (44.1 kHz: 160
samples) a `DirectFifo` holds the few samples the hops written get behind
the period read (96 at 44.1 kHz: 6 ms more delay).

`choose_clock` decides ``clock: auto``; `open_pipeline` builds the pipeline
the setting asks for.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import devices
from .audio import AudioPipeline
from .config import Settings
from .constants import SHIFT
from .engine import HopProcessor
from .errors import ConfigError
from .measure import BlockStats
from .push import PushPipeline
from .streams import open_stream

log = logging.getLogger("dtlnd")

#: A shared-clock stream with this many xruns (overflows + underflows + input gaps) in one
#: `XRUN_WINDOW` s window is logged once, with the advice to use two streams.
XRUN_LIMIT = 5
XRUN_WINDOW = 10.0


class DirectBridge:
    """The duplex hand-off: the hop written is the hop read, no buffer, no drift control.

    It has the parts of `ClockBridge` the pipeline uses.  A read with no
    hop written since the last read (it cannot happen in one callback
    unless the engine call failed) plays silence and counts a miss.
    """

    latency_samples = 0.0

    def __init__(self, stats: BlockStats) -> None:
        self.stats = stats
        self._hop = np.zeros(SHIFT, np.float32)
        self._ready = False

    def reset(self) -> None:
        self._hop.fill(0.0)
        self._ready = False

    def write(self, block: np.ndarray, now_ns: Optional[int] = None) -> None:
        np.copyto(self._hop, block)
        self._ready = True

    def read(self, out: np.ndarray, now_ns: Optional[int] = None) -> None:
        if self._ready:
            np.copyto(out, self._hop)
            self._ready = False
        else:
            out.fill(0.0)
            self.stats.missed += 1


class DirectFifo:
    """The duplex hand-off for periods that are not one hop: a FIFO, no drift control.

    At 44.1 kHz a period is 160 samples at 16 kHz: the input side writes
    one or two hops per callback, the output side reads 160.  The FIFO
    starts with ``prefill`` zeros, 128 - gcd(period, 128) (96 at 44.1 kHz):
    the most the reads get ahead of the writes over the pattern, so that no
    read runs short.  That is the only delay it adds (``latency_samples``).
    A read that finds too few samples (the engine call failed) plays
    silence, takes nothing and counts a miss; a fill past the buffer (only
    after many of those) starts again from the prefill, counted as a resync.
    It has the parts of `ClockBridge` the pipeline uses.
    """

    def __init__(self, stats: BlockStats, period: int) -> None:
        """``period``: the 16 kHz samples of one device period, what each read takes (not 128)."""
        self.stats = stats
        self.prefill = SHIFT - math.gcd(period, SHIFT)
        self.latency_samples = float(self.prefill)
        self._buf = np.zeros(4 * (period + SHIFT), np.float32)
        self.reset()

    def reset(self) -> None:
        self._buf.fill(0.0)
        self._read = 0
        self._written = self.prefill

    def write(self, block: np.ndarray, now_ns: Optional[int] = None) -> None:
        n = len(block)
        if self._written - self._read + n > len(self._buf):
            self.reset()
            self.stats.resyncs += 1
        self._copy(block, self._written, into_ring=True)
        self._written += n

    def read(self, out: np.ndarray, now_ns: Optional[int] = None) -> None:
        n = len(out)
        if self._written - self._read < n:
            out.fill(0.0)
            self.stats.missed += 1
            return
        self._copy(out, self._read, into_ring=False)
        self._read += n

    def _copy(self, data: np.ndarray, pos: int, into_ring: bool) -> None:
        """``data`` to or from the ring at ``pos``: one slice, or two where it wraps."""
        buf, n = self._buf, len(data)
        at = pos % len(buf)
        first = min(n, len(buf) - at)
        if into_ring:
            buf[at:at + first] = data[:first]
            if first < n:
                buf[:n - first] = data[first:]
        else:
            data[:first] = buf[at:at + first]
            if first < n:
                data[first:] = buf[:n - first]


class DuplexPipeline(AudioPipeline):
    """One duplex stream for input and output; same interface as `AudioPipeline`."""

    def __init__(self, settings: Settings, processor: HopProcessor, stats: BlockStats,
                 on_finished: Optional[Callable[[], None]] = None) -> None:
        """Refuse rates one stream cannot serve before anything is built or logged; then as `AudioPipeline`."""
        s = settings
        in_rate = devices.pick_rate(devices.resolve(s.input.device, "input"), "input", s.input.rate,
                                    s.input_channels)
        out_rate = devices.pick_rate(devices.resolve(s.output.device, "output"), "output", s.output.rate,
                                     s.output.channels)
        if in_rate != out_rate:
            raise ConfigError(f"clock: shared needs one rate for both directions, but the input runs at "
                              f"{in_rate} Hz and the output at {out_rate} Hz: set input.rate and "
                              "output.rate alike, or use clock: separate")
        super().__init__(settings, processor, stats, on_finished)

    def _open_streams(self, n_in: int, dtype: str, in_block: int, out_block: int,
                      on_finished: Optional[Callable[[], None]]) -> None:
        """Open one duplex stream (called by `AudioPipeline.__init__`)."""
        period = len(self._hop_read)
        self.bridge = (DirectBridge(self.stats) if period == SHIFT  # type: ignore[assignment]
                       else DirectFifo(self.stats, period))
        self._rt["output"] = True  # one thread: the input side's request covers it
        self._xruns = XrunWatch(self.stats)
        sd = devices.sd()
        s = self.settings
        try:
            stream = open_stream(
                "duplex", self._duplex_callback, device=(self.in_dev.index, self.out_dev.index),
                samplerate=self.in_rate, channels=(n_in, s.output.channels), dtype=("float32", dtype),
                blocksize=in_block, latency=s.latency, finished_callback=on_finished)
        except sd.PortAudioError as exc:
            raise devices.open_error("input", self.in_dev, exc) from None
        self.input_stream = self.output_stream = stream
        self._starts = (("input", self.in_dev, stream),)

    def _duplex_callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, t: None, status: int) -> None:
        """The parent's two callbacks, in order: each catches and counts its own errors."""
        self._input_callback(indata, frames, t, status)
        self._output_callback(outdata, frames, t, status)

    def _queue_delay(self) -> float:
        """None of its own: the hops' wait for a whole period is in the FIFO's prefill (`DirectFifo`).

        The output's 16 kHz sample ``p`` is the engine's output ``p -
        prefill``, whatever the pattern of hops, so the path's delay is the
        prefill, not a mean wait.
        """
        return 0.0

    def describe(self) -> str:
        return super().describe() + ", one duplex stream (clock: shared)"

    def check_xruns(self, now: float) -> None:
        """From the supervisor loop: log once when xruns keep coming, and suggest two streams."""
        told = self._xruns.note(now)
        if told:
            log.warning("%s", told)


class XrunWatch:
    """Whether a shared-clock stream keeps hitting xruns: `XRUN_LIMIT` in one `XRUN_WINDOW` s window, told once.

    Input gaps count too: PortAudio flags nothing when the process or the
    server stalled, and a duplex stream has no buffer to ride one out.
    """

    def __init__(self, stats: BlockStats) -> None:
        self.stats = stats
        self._from = -1.0
        self._seen = 0
        self.told = False

    def note(self, now: float) -> Optional[str]:
        """The line to log, once; None otherwise."""
        count = self.stats.input_overflows + self.stats.output_underflows + self.stats.gaps
        if self._from < 0 or now - self._from >= XRUN_WINDOW:
            self._from, self._seen = now, count
            return None
        if self.told or count - self._seen < XRUN_LIMIT:
            return None
        self.told = True
        return (f"clock: shared: {count - self._seen} xruns or input gaps in {now - self._from:.0f} s: the "
                "devices may not share a clock (or the machine is overloaded or stalled); try clock: separate")


# -- clock: auto ---------------------------------------------------------------------------

_PA_CARD = re.compile(r"\(hw:(\d+),\d+\)")  # PortAudio's ALSA device names end "(hw:1,0)"
_ALSA_CARD = re.compile(r"^(?:plug)?hw:(?:CARD=)?([^,.\s]+)")  # hw:1,0  hw:CARD=Array,DEV=0  plughw:Array


def read_cards(path: Path) -> dict[str, tuple[str, str]]:
    """``/proc/asound/cards`` as {index: (id, driver)}; empty if it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    cards = {}
    for m in re.finditer(r"^\s*(\d+)\s+\[(\S+)\s*\]:\s*(\S+)", text, re.MULTILINE):
        cards[m.group(1)] = (m.group(2), m.group(3))
    return cards


def card_of(names: tuple[str, ...], cards: dict[str, tuple[str, str]]) -> Optional[str]:
    """The ALSA card index (or, not in ``cards``, the id as written) that a device's names point at."""
    for name in names:
        m = _PA_CARD.search(name) or _ALSA_CARD.match(name)
        if m:
            token = m.group(1)
            for index, (card_id, _) in cards.items():
                if token == card_id:
                    return index
            return token
    return None


def choose_clock(setting: str, in_names: tuple[str, ...], out_names: tuple[str, ...], same_device: bool,
                 root: Path = Path("/")) -> tuple[str, str]:
    """``(separate | shared, why)`` for the ``clock`` setting; ``root``: where /proc and /sys are (tests).

    ``*_names``: what names the device (the setting, PortAudio's name).
    Shared for auto only when dtlnd can tell: one device for both
    directions, both on one ALSA card, or the output on snd-aloop whose
    ``timer_source`` names the capture card.
    """
    if setting != "auto":
        return setting, f"clock: {setting} is set"
    if same_device:
        return "shared", f"input and output are one device ({in_names[-1]!r})"
    cards = read_cards(root / "proc/asound/cards")
    c_in, c_out = card_of(in_names, cards), card_of(out_names, cards)
    if c_in is not None and c_in == c_out:
        return "shared", f"input and output are on one ALSA card ({_card_label(c_in, cards)})"
    try:
        timer = (root / "sys/module/snd_aloop/parameters/timer_source").read_text().strip()
    except OSError:
        timer = ""
    timer_card = card_of((timer,), cards) if timer.startswith("hw:") else card_of(("hw:" + timer,), cards)
    out_is_loop = c_out is not None and (cards.get(c_out, ("", ""))[1] == "Loopback" or c_out == "Loopback")
    if out_is_loop and timer and c_in is not None and timer_card == c_in:
        return "shared", (f"snd-aloop's timer_source ({timer}) is the capture card "
                          f"({_card_label(c_in, cards)}): the loopback runs on its clock")
    if out_is_loop and timer:
        why = f"snd-aloop's timer_source ({timer}) is not the capture card"
    elif out_is_loop:
        why = "snd-aloop runs on the kernel timer (no timer_source), not the capture card's clock"
    elif c_in is not None and c_out is not None:
        why = f"input and output are on different cards ({_card_label(c_in, cards)}, {_card_label(c_out, cards)})"
    else:
        why = "dtlnd cannot tell that input and output share a clock"
    return "separate", why


def _card_label(card: str, cards: dict[str, tuple[str, str]]) -> str:
    return f"card {card} [{cards[card][0]}]" if card in cards else f"card {card}"


def open_pipeline(settings: Settings, processor: HopProcessor, stats: BlockStats,
                  on_finished: Optional[Callable[[], None]] = None, root: Path = Path("/"),
                  separate: type[AudioPipeline] = AudioPipeline,
                  push: type[AudioPipeline] = PushPipeline) -> AudioPipeline:
    """The pipeline ``clock`` and ``playback`` ask for (clock: auto is decided from the devices, and logged).

    ``separate``, ``push``: the classes for ``clock: separate`` with ``playback: callback`` and ``push``
    (the service passes its own names for them).
    """
    s = settings
    clock, why = s.clock, ""
    if clock == "auto":
        in_dev, out_dev = devices.resolve(s.input.device, "input"), devices.resolve(s.output.device, "output")
        clock, why = choose_clock(clock, (str(s.input.device), in_dev.name), (str(s.output.device), out_dev.name),
                                  in_dev.index == out_dev.index, root)
        if clock == "shared":
            try:
                pipeline = DuplexPipeline(settings, processor, stats, on_finished=on_finished)
            except ConfigError as exc:  # the rates do not suit one stream
                log.info("clock: auto chose separate: %s, but %s", why, exc)
            else:
                log.info("clock: auto chose shared: %s", why)
                return pipeline
        else:
            log.info("clock: auto chose separate: %s", why)
        clock = "separate"
    if clock == "shared":
        return DuplexPipeline(settings, processor, stats, on_finished=on_finished)
    if s.playback == "push":
        try:
            return push(settings, processor, stats, on_finished=on_finished)
        except ConfigError as exc:  # an output rate whose period is not one hop
            log.info("%s: its own playback callback instead", exc)
    return separate(settings, processor, stats, on_finished=on_finished)

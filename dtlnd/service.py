"""``dtlnd run``: the service lifecycle around the audio pipeline.

One supervisor loop in the main thread owns the audio device.  It is a
small state machine (`State`): OPENING (streams started, waiting for both
callbacks), FLOWING (READY sent, the watchdog fed while both callbacks
advance), LOST (no streams: reopening with backoff, re-initialising
PortAudio for a fresh device list), RELOADING (SIGHUP) and STOPPING.  Once a
second it reports: STATUS= to systemd, the ``--measure`` line, the state
file `dtlnd status` reads, and a row of the ``--plot`` timeline.  Signal
handlers and the streams' ``finished_callback`` only set flags.  Garbage
collection runs from the loop too (`gcpolicy`), and other threads hold the
GIL for short turns (`gil`).
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from . import config, devices, engine, gil, measure, paths
from .audio import AudioPipeline
from .config import Settings
from .constants import DEFAULT_MODELS
from .duplex import open_pipeline
from .errors import ConfigError, DeviceError, DtlndError, UsageError
from .gcpolicy import Collector
from .measure import BlockStats, Snapshot
from .notify import Notifier
from .push import PushPipeline
from .status import ProcessUsage, StateFile
from .watch import Backoff, StallWatch

log = logging.getLogger("dtlnd")

TICK = 0.25  # supervisor period, seconds: stall watch, watchdog, gc; streams that end wake it at once


class State(enum.Enum):
    OPENING = "opening"
    FLOWING = "flowing"
    LOST = "lost"
    RELOADING = "reloading"
    STOPPING = "stopping"


class Daemon:
    def __init__(self, settings: Settings, config_path: Optional[Path], overrides: Mapping[str, Any],
                 measure: bool = False, duration: Optional[float] = None,
                 out: Callable[[str], None] = print, plot: Optional[Path] = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.measure = measure
        self.duration = duration
        self.out = out
        self.plot = plot
        self.notify = Notifier()
        self.stats = BlockStats()
        self.pipeline: Optional[AudioPipeline] = None
        self.processor = self._load(settings)
        self.state = State.OPENING
        self.state_file = StateFile()
        self.timeline = measure_timeline(duration) if plot is not None else None
        self._usage = ProcessUsage()
        self._stop = False
        self._reload = False
        self._wake = threading.Event()  # set by signals and by a stream that finished
        self._watch = StallWatch(self.stats)
        self._backoff = Backoff()
        # Callback errors already logged, and already named in an "audio lost"
        # line: the main side's own counters (the callbacks own the count).
        self._errors_reported = self._errors_named = 0
        self._last_ping = 0.0
        self.gc = Collector()
        self._switch_interval = sys.getswitchinterval()  # Python's own, put back at the end
        self._report_from = 0  # the first block of the current report's second

    # -- set-up --------------------------------------------------------------

    @staticmethod
    def _load(s: Settings) -> engine.HopProcessor:
        from .delayline import wrap  # reference alignment (aec, aec+ns): see dtlnd.align

        return wrap(engine.build(s.mode, s.model, s.ns_model, s.model_dir, s.runtime, s.threads,
                                 pipeline=s.pipeline, max_suppression=s.max_suppression),
                    s.mode, s.ref_delay, s.ref_delay_max, s.ref_lead)

    def model_label(self) -> str:
        """The processor's own label once the engine gives one; else built from the settings."""
        label = self._engine("label", None)
        if label:
            return str(label)
        s = self.settings
        first = s.model or DEFAULT_MODELS["ns" if s.mode == "ns" else "aec"]
        return first + (f"+{s.ns_model or DEFAULT_MODELS['ns']}" if s.mode == "aec+ns" else "")

    def runtime_label(self) -> str:
        return str(self._engine("runtime", None) or self.settings.runtime)

    def _engine(self, name: str, default: Any) -> Any:
        """An engine figure (``label``, ``runtime``, ``nonfinite``, ``resets``) of the processor, or of the
        processor a wrapper (the reference alignment's) holds as ``inner``, when the wrapper does not pass it on."""
        p: Any = self.processor
        while p is not None:
            if hasattr(p, name):
                return getattr(p, name)
            p = getattr(p, "inner", None)
        return default

    def _signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, *_: Any) -> None:
        self._stop = True
        self._wake.set()

    def _on_hup(self, *_: Any) -> None:
        self._reload = True
        self._wake.set()

    def _on_finished(self) -> None:
        """A stream ended (PortAudio's finished_callback, in its thread): look at once."""
        self._wake.set()

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        self._signals()
        # The first open checks the settings against the devices: a device
        # name that does not exist is a configuration error, not an unplug,
        # and its one-line error is all the user sees (so log after it).
        self._switch_interval = gil.shorten()
        self.gc.start()  # before the streams start: the one full collection must not delay a callback
        try:
            self._open(time.monotonic())
        except BaseException:
            self._interpreter_as_before()
            raise
        log.info("dtlnd starting: mode %s, model %s, runtime %s", self.settings.mode, self.model_label(),
                 self.runtime_label())
        started = time.monotonic()  # after the open (seconds, on a loaded machine): --duration is audio time
        next_report = started + 1.0
        steps = {State.OPENING: self._opening, State.FLOWING: self._flowing, State.LOST: self._lost}
        while not self._stop:
            self._wake.wait(TICK)
            self._wake.clear()
            now = time.monotonic()
            if self._stop or (self.duration is not None and now - started >= self.duration):
                break
            if self._reload:
                self._reload = False
                self._do_reload(now)
            steps[self.state](now)
            self.gc.tick(now)
            if now >= next_report:
                # A loop held up (a close that blocked) does not catch up in a burst.
                next_report = max(next_report + 1.0, now + 0.5)
                self._report(self.snapshot(now - started, self._report_from))
                self._report_from = self.stats.blocks
        return self._finish(time.monotonic() - started)

    def _enter(self, state: State) -> None:
        log.debug("state %s -> %s", self.state.value, state.value)
        self.state = state

    def _opening(self, now: float) -> None:
        if self._check_alive(now):
            return
        if self._watch.started:
            self.notify("READY=1")
            self._enter(State.FLOWING)
            self._log_rt()
            log.info("audio flowing: %s", self.pipeline.describe() if self.pipeline else "")

    def _flowing(self, now: float) -> None:
        if self._check_alive(now):
            return
        # Ping only when both directions moved since the last ping.
        if now - self._last_ping >= self.notify.watchdog_interval and self._watch.moved_since_ping():
            self.notify("WATCHDOG=1")
            self._last_ping = now
            self._watch.pinged = self._watch.seen

    def _lost(self, now: float) -> None:
        # Waiting for a device: the loop itself is alive, so keep systemd's watchdog fed.
        if now - self._last_ping >= self.notify.watchdog_interval:
            self.notify("WATCHDOG=1")
            self._last_ping = now
        if self._backoff.due(now):
            if self._reopen(now) is None:
                log.info("audio resumed after %.1f s", now - self._backoff.since)
            else:
                self._backoff.failed(now)

    def _check_alive(self, now: float) -> bool:
        """True (and the state LOST) when the open streams died or went silent."""
        p = self.pipeline
        self._watch.update(now)
        self._log_errors()
        check_xruns = getattr(p, "check_xruns", None)  # clock: shared (dtlnd.duplex)
        if check_xruns is not None:
            check_xruns(now)
        reason = "the stream stopped" if p is None or not p.active else self._watch.stalled(now, p.output_blocked)
        if reason is None:
            return False
        if self.stats.callback_errors != self._errors_named:  # a new error since the last loss: name it
            self._errors_named = self.stats.callback_errors
            reason += f" (callback error: {self.stats.last_error})"
        log.warning("audio lost: %s; reopening with backoff", reason)
        self.stats.streams_lost += 1
        # Before closing: a close can block on a wedged driver, and systemd
        # should show why the watchdog pings stopped.
        self.notify(f"STATUS=audio lost ({reason}); retrying")
        self._close()
        self._backoff.start(now)
        self._enter(State.LOST)
        return True

    def _log_errors(self) -> None:
        """Log callback errors the callbacks counted since the last time (the main side's own counter)."""
        count = self.stats.callback_errors
        if count != self._errors_reported:
            log.warning("audio callback error (%d so far): %s", count, self.stats.last_error)
            self._errors_reported = count

    def _log_rt(self) -> None:
        p = self.pipeline
        results = getattr(p, "rt_results", None)
        if results:
            msg = results[0]
            (log.info if msg.startswith("audio threads") or "off" in msg else log.warning)(msg)

    def _finish(self, seconds: float) -> int:
        ended_in = self.state
        self._enter(State.STOPPING)
        self.notify("STOPPING=1")
        log.info("stopping")
        summary = self.snapshot(seconds, 0)
        if self.timeline is not None:  # the last part-second too
            self._add_row(self.snapshot(seconds, self._report_from), self._alignment()[1])
        t0 = time.monotonic()
        self._close()  # bounded: a close blocked in the driver is left behind (AudioPipeline.close)
        log.debug("streams closed in %.2f s", time.monotonic() - t0)
        close = getattr(self.processor, "close", None)
        if callable(close):  # a pipelined processor's worker thread ends here
            close()
        self.state_file.remove()
        self._interpreter_as_before()
        status = 0
        if self.measure:
            # Audio that stopped (or never started) in the run's last seconds: too short for a stall.
            more = [] if ended_in is State.FLOWING else [f"audio not flowing at the end ({ended_in.value})"]
            align_text, align = self._alignment()
            notes = [f"alignment: {align_text}; estimator {align.get('cpu_per_s', 0.0):.4f} CPU s per audio s"
                     ] if align_text else []
            for line in summary.summary(self.settings.mode, self.model_label(), more, notes):
                self.out(line)
            status = 1 if summary.causes(more) else 0
        if self.timeline is not None and self.plot is not None:
            from . import measure_plot

            t0 = time.monotonic()
            measure_plot.write(self.plot, self.timeline, f"{self.settings.mode} {self.model_label()}")
            log.debug("plot written to %s in %.2f s", self.plot, time.monotonic() - t0)
        return status

    def _interpreter_as_before(self) -> None:
        """Python's own garbage collection and switch interval again (the run ended, or never began)."""
        self.gc.stop()
        sys.setswitchinterval(self._switch_interval)

    # -- opening and closing -----------------------------------------------------

    def _open(self, now: float) -> None:
        """Open and start a pipeline; it counts as flowing once both callbacks ran *after* this."""
        self.pipeline = open_pipeline(self.settings, self.processor, self.stats, on_finished=self._on_finished,
                                      separate=AudioPipeline, push=PushPipeline)
        self._watch.restart(now)
        self._enter(State.OPENING)
        self.pipeline.start()
        devices.unload_unused_plugins()

    def _reopen(self, now: float) -> Optional[Exception]:
        """Open for the current settings with a fresh device list (PortAudio lists once per init).

        Returns why the devices did not open, with nothing left open, or None.
        """
        try:
            devices.reinitialize()
            self._open(now)
        except Exception as exc:  # DtlndError, or PortAudio's own while a device is gone
            log.debug("reopen failed: %s", exc)
            self._close()
            self._enter(State.LOST)
            return exc
        return None

    def _close(self) -> None:
        p, self.pipeline = self.pipeline, None
        if p is not None:
            p.close()

    def _do_reload(self, now: float) -> None:
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload (started without one)")
            return
        try:
            new = config.load(self.config_path, self.overrides)
            processor = self._load(new)
        except DtlndError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        log.info("reloading: mode %s, model %s", new.mode, new.model or "default")
        self._enter(State.RELOADING)
        self.notify("RELOADING=1")
        old = (self.settings, self.processor)
        self._close()
        self.settings, self.processor = new, processor
        # Neither failure may end the daemon: a reload can come while a
        # device is unplugged, and then the old settings do not open either;
        # the LOST state's retries take over from a closed pipeline.
        error = self._reopen(now)
        if error is not None:
            log.error("reload failed, back to the running configuration: %s", error)
            self.settings, self.processor = old
            processor.close()  # a pipelined processor's worker thread ends here, not in a gc pass
            error = self._reopen(now)
            if error is not None:
                log.warning("the running configuration does not open either (%s); retrying", error)
                self._backoff.start(now)
            return
        old[1].close()
        log.info("reloaded: %s", self.pipeline.describe() if self.pipeline else "")

    # -- reporting -----------------------------------------------------------

    def snapshot(self, seconds: float, since: int) -> Snapshot:
        p = self.pipeline
        return measure.take(self.stats, seconds, since, p.latency() if p is not None else None,
                            int(self._engine("nonfinite", 0)), int(self._engine("resets", 0)))

    def _alignment(self) -> tuple[str, dict[str, Any]]:
        """The reference alignment's own words and figures (aec modes), or ``("", {})``."""
        a = getattr(self.processor, "alignment", None)
        if a is None:
            return "", {}
        figures = {k: getattr(a, k, None) for k in ("state", "lag_ms", "applied_ms", "mic_delay_ms", "confidence",
                                                     "cpu_per_s")}
        text = a.describe() if callable(getattr(a, "describe", None)) else str(a)
        return text, {"describe": text, **{k: v for k, v in figures.items() if v is not None}}

    def _add_row(self, snap: Snapshot, align: dict[str, Any]) -> None:
        if self.timeline is not None:
            delay = align.get("applied_ms")
            self.timeline.add(snap, float(delay) if isinstance(delay, (int, float)) else None)

    def _report(self, snap: Snapshot) -> None:
        align_text, align = self._alignment()
        extra = f" | {align_text}" if align_text else ""
        if self.pipeline is not None:
            self.notify("STATUS=" + snap.status(self.settings.mode, self.model_label()) + extra)
        if self.measure:
            self.out(snap.line() + extra)
        self._add_row(snap, align)
        state = {"pid": os.getpid(), "updated": time.time(), "uptime_s": round(snap.seconds, 1),
                 "state": self.state.value, "mode": self.settings.mode, "model": self.model_label(),
                 "runtime": self.runtime_label(), "devices": self.pipeline.describe() if self.pipeline else None,
                 **snap.as_dict(), "extra": {"alignment": align} if align else {},
                 "cpu_percent": round(self._usage.cpu_percent(), 1), "rss_kib": self._usage.rss_cached(),
                 "gc_max_ms": round(self.gc.max_ms, 3)}
        why = self.state_file.write(state)
        if why is not None:
            log.warning("%s", why)


def measure_timeline(duration: Optional[float]) -> measure.Timeline:
    """Room for the whole run when its length is known (plus slack), else its last hour."""
    return measure.Timeline(int(duration) + 5 if duration is not None else 3600)


def run(config_path: Optional[Path], overrides: Mapping[str, Any], measure: bool, duration: Optional[float],
        plot: Optional[Path] = None) -> int:
    settings = config.load(config_path, overrides)
    logging.getLogger().setLevel(settings.log_level.upper())
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration {duration}: must be more than 0 seconds")
    if plot is not None:
        if not measure:
            raise UsageError("--plot needs --measure (it draws the figures --measure collects)")
        from . import measure_plot as plotting

        plotting.check(plot)  # before the run: a missing extra or an unwritable path fails now
    if config_path is None and paths.CONFIG_FILE.exists():
        config_path = paths.CONFIG_FILE  # what SIGHUP reloads
    daemon = Daemon(settings, config_path, overrides, measure, duration, out=lambda line: print(line, flush=True),
                    plot=plot)
    try:
        return daemon.run()
    except DeviceError:
        daemon.notify("STOPPING=1")
        raise
    finally:
        sys.stdout.flush()

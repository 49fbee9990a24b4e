"""``dtlnd run``: the service lifecycle around the audio pipeline.

One supervisor loop in the main thread owns the audio device: it opens the
pipeline, watches that the callbacks keep advancing, reopens it with
backoff (re-initialising PortAudio for a fresh device list) when a device
disappears or the stream dies, reloads the configuration on SIGHUP, talks
to systemd (READY, WATCHDOG, STATUS, STOPPING) and prints ``--measure``
reports.  Signal handlers only set flags.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from . import config, devices, engine, paths
from .audio import AudioPipeline
from .config import Settings
from .errors import ConfigError, DeviceError, DtlndError
from .measure import BlockStats, Snapshot, summarize

log = logging.getLogger("dtlnd")

TICK = 0.05  # supervisor period, seconds
STALL = 1.5  # seconds without callbacks before a stream counts as dead
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; silent when not run by systemd."""

    def __init__(self) -> None:
        self._n = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._n = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else 1.0

    def __call__(self, message: str) -> None:
        if self._n is not None:
            self._n.notify(message)


class Daemon:
    def __init__(self, settings: Settings, config_path: Optional[Path], overrides: Mapping[str, Any],
                 measure: bool = False, duration: Optional[float] = None,
                 out: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides)
        self.measure = measure
        self.duration = duration
        self.out = out
        self.notify = Notifier()
        self.stats = BlockStats()
        self.pipeline: Optional[AudioPipeline] = None
        self.processor = self._load(settings)
        self._stop = threading.Event()
        self._reload = False
        self._ready = False
        self._base = (0, 0)  # (input blocks, output callbacks) when the pipeline was opened
        self.totals = {"missed": 0, "resyncs": 0, "lost": 0}

    # -- set-up --------------------------------------------------------------

    @staticmethod
    def _load(s: Settings) -> engine.HopProcessor:
        return engine.build(s.mode, s.model, s.ns_model, s.model_dir, s.runtime, s.threads,
                            pipeline=s.pipeline, max_suppression=s.max_suppression)

    def _model_label(self) -> str:
        s = self.settings
        first = s.model or engine.DEFAULT_MODELS["ns" if s.mode == "ns" else "aec"]
        return first + (f"+{s.ns_model or engine.DEFAULT_MODELS['ns']}" if s.mode == "aec+ns" else "")

    def _signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, *_: Any) -> None:
        self._reload = True

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        self._signals()
        s = self.settings
        # The first open checks the settings against the devices: a device
        # name that does not exist is a configuration error, not an unplug,
        # and its one-line error is all the user sees (so log after it).
        self._open()
        log.info("dtlnd starting: mode %s, model %s, runtime %s", s.mode, self._model_label(),
                 self.processor_runtime())
        started = time.monotonic()
        next_report = started + 1.0
        last_ping = 0.0
        # Per direction (input blocks, output callbacks): the counts last
        # seen, when each last moved, and the counts at the last WATCHDOG.
        # Both must move: a wedged output under a live input is a stall too.
        watched: Optional[AudioPipeline] = None
        seen, moved, pinged = (-1, -1), [started, started], (-1, -1)
        report_from = 0
        lost_at: Optional[float] = None
        attempt = 0
        next_try = 0.0
        while not self._stop.wait(TICK):
            now = time.monotonic()
            if self.duration is not None and now - started >= self.duration:
                break
            if self._reload:
                self._reload = False
                self._do_reload()
            p = self.pipeline
            if p is not None:
                if p is not watched:  # opened, reopened or reloaded: stall clocks start now
                    watched, seen, moved = p, (-1, -1), [now, now]
                counts = (self.stats.blocks, self.stats.outputs)
                moved = [now if c != old else t for c, old, t in zip(counts, seen, moved)]
                seen = counts
                quiet = [now - t for t in moved]
                if not p.active or max(quiet) > STALL:
                    # Name the side only when the other one was still moving lately.
                    side = "" if min(quiet) > STALL / 2 else ("input " if quiet[0] > quiet[1] else "output ")
                    reason = "the stream stopped" if not p.active else f"no {side}audio for {STALL:.1f} s"
                    if self.stats.last_error is not None:
                        reason += f" (callback error: {self.stats.last_error})"
                        self.stats.last_error = None  # reported; a later loss names its own
                    log.warning("audio lost: %s; reopening with backoff", reason)
                    self.totals["lost"] += 1
                    # Before closing: a close can block on a wedged driver, and
                    # systemd should show why the watchdog pings stopped.
                    self.notify(f"STATUS=audio lost ({reason}); retrying")
                    self._close()
                    lost_at, attempt, next_try = now, 0, now + BACKOFF[0]
                    continue
                if not self._ready and self.stats.blocks > self._base[0] and self.stats.outputs > self._base[1]:
                    self._ready = True
                    self.notify("READY=1")
                    self._log_rt()
                    log.info("audio flowing: %s", p.describe())
                flowing = counts[0] != pinged[0] and counts[1] != pinged[1]
                if self._ready and flowing and now - last_ping >= self.notify.watchdog_interval:
                    self.notify("WATCHDOG=1")
                    last_ping, pinged = now, counts
            else:
                # Waiting for a device: the loop itself is alive, so keep
                # systemd's watchdog fed while it retries.
                if now - last_ping >= self.notify.watchdog_interval:
                    self.notify("WATCHDOG=1")
                    last_ping = now
                if now >= next_try:
                    if self._reopen() is None:
                        log.info("audio resumed after %.1f s", now - (lost_at or now))
                        self._ready = False
                    else:
                        attempt += 1
                        next_try = now + BACKOFF[min(attempt, len(BACKOFF) - 1)]
            if now >= next_report:
                next_report += 1.0
                if next_report <= now:  # the loop was held up (a close that blocked): no catch-up burst
                    next_report = now + 1.0
                snap = self.snapshot(now - started, report_from)
                report_from = self.stats.blocks
                if snap is not None:
                    self.notify("STATUS=" + snap.status(self.settings.mode, self._model_label()))
                    if self.measure:
                        self.out(snap.line())
        self.notify("STOPPING=1")
        log.info("stopping")
        summary = self.snapshot(time.monotonic() - started, 0)
        self._close()
        if self.measure:
            return self._summary(summary)
        return 0

    def processor_runtime(self) -> str:
        return self.processor.runtime

    def _log_rt(self) -> None:
        p = self.pipeline
        if p is not None and p.rt_results:
            msg = p.rt_results[0]
            (log.info if msg.startswith("audio threads") or "off" in msg else log.warning)(msg)

    # -- opening and closing -----------------------------------------------------

    def _open(self) -> None:
        """Open and start a pipeline; it counts as flowing once both callbacks ran *after* this.

        The counters run on across reopens and reloads, so "flowing" is
        measured from their values here, not from zero.
        """
        self.pipeline = AudioPipeline(self.settings, self.processor, self.stats)
        self._base = (self.stats.blocks, self.stats.outputs)
        self.pipeline.start()

    def _reopen(self) -> Optional[Exception]:
        """Open for the current settings with a fresh device list (PortAudio lists once per init).

        Returns why the devices did not open, with nothing left open, or None.
        """
        try:
            devices.reinitialize()
            self._open()
        except Exception as exc:  # DtlndError, or PortAudio's own while a device is gone
            log.debug("reopen failed: %s", exc)
            self._close()
            return exc
        return None

    def _close(self) -> None:
        p, self.pipeline = self.pipeline, None
        if p is not None:
            self.totals["missed"] += p.bridge.missed
            self.totals["resyncs"] += p.bridge.resyncs
            p.close()

    def _do_reload(self) -> None:
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
        self.notify("RELOADING=1")
        old = (self.settings, self.processor)
        self._close()
        self.settings, self.processor = new, processor
        self._ready = False
        # Neither failure may end the daemon: a reload can come while a
        # device is unplugged, and then the old settings do not open either;
        # the supervisor's retry loop takes over from a closed pipeline.
        error = self._reopen()
        if error is not None:
            log.error("reload failed, back to the running configuration: %s", error)
            self.settings, self.processor = old
            processor.close()  # a pipelined processor's worker thread ends here, not in a gc pass
            error = self._reopen()
            if error is not None:
                log.warning("the running configuration does not open either (%s); retrying", error)
            return
        old[1].close()
        log.info("reloaded: %s", self.pipeline.describe() if self.pipeline else "")

    # -- reporting -----------------------------------------------------------

    def snapshot(self, seconds: float, since: int) -> Optional[Snapshot]:
        p = self.pipeline
        if p is None:
            return None
        mean, p99, mx = summarize(self.stats.times_since(since))
        st = self.stats
        return Snapshot(seconds, st.blocks, mean, p99, mx, st.input_overflows, st.output_underflows,
                        p.bridge.missed + self.totals["missed"], p.bridge.resyncs + self.totals["resyncs"],
                        st.late, p.latency())

    def _summary(self, snap: Optional[Snapshot]) -> int:
        if snap is None:
            self.out("dtlnd measure: no audio was processed")
            return 1
        # Seconds without audio are no better than an xrun: they fail the run too.
        ok = snap.xruns == 0 and snap.missed == 0 and self.totals["lost"] == 0
        self.out(f"summary: {snap.seconds:.1f} s, {snap.blocks} blocks, mode {self.settings.mode}, "
                 f"model {self._model_label()}")
        self.out(f"  engine per block: mean {snap.mean_ms:.3f} ms, p99 {snap.p99_ms:.3f} ms, max {snap.max_ms:.3f} ms"
                 f" ({100 * snap.budget_share:.1f}% of the 8 ms budget; {snap.late} blocks over it)")
        self.out(f"  xruns: input overflow {snap.input_overflows}, output underflow {snap.output_underflows}; "
                 f"deadline misses {snap.missed}; buffer re-centred {snap.resyncs} times; "
                 f"audio lost {self.totals['lost']} times")
        self.out(f"  latency: {snap.latency}")
        self.out(f"  result: {'OK' if ok else 'FAIL: xruns, deadline misses or lost audio'}")
        return 0 if ok else 1


def run(config_path: Optional[Path], overrides: Mapping[str, Any], measure: bool, duration: Optional[float]) -> int:
    settings = config.load(config_path, overrides)
    logging.getLogger().setLevel(settings.log_level.upper())
    if duration is not None and duration <= 0:
        raise ConfigError(f"--duration {duration}: must be more than 0 seconds")
    if config_path is None and paths.CONFIG_FILE.exists():
        config_path = paths.CONFIG_FILE  # what SIGHUP reloads
    daemon = Daemon(settings, config_path, overrides, measure, duration, out=lambda line: print(line, flush=True))
    try:
        return daemon.run()
    except DeviceError:
        daemon.notify("STOPPING=1")
        raise
    finally:
        sys.stdout.flush()

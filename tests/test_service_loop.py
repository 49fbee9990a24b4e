"""The supervisor loop of ``dtlnd run`` against a fake pipeline: no audio devices needed.

The fake stands in for `dtlnd.audio.AudioPipeline`: a thread bumps the
input and output counters every 8 ms, and the test switches either
direction off, kills the stream, or makes opening fail, to check what the
loop does about it (logs, sd_notify messages, reopening, SIGHUP reloads).
The same policies run on the real audio path in test_daemon_rig.py.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import pytest

from dtlnd import config, service
from dtlnd.errors import DeviceError
from dtlnd.measure import Latency


class FakePipeline:
    """Counts 8 ms blocks in a thread; class attributes steer every instance."""

    fail: Exception | None = None  # raised by every constructor call (the device won't open)
    fail_once: Exception | None = None  # raised by the next constructor call only
    delay = 0.0  # seconds before the first callbacks after start()
    close_takes = 0.0  # seconds close() blocks (a stream wedged in the driver)
    input_on = True
    output_on = True
    opened: list["FakePipeline"] = []

    def __init__(self, settings, processor, stats) -> None:
        error, FakePipeline.fail_once = FakePipeline.fail_once or FakePipeline.fail, None
        if error is not None:
            raise error
        self.settings, self.stats = settings, stats
        self.bridge = SimpleNamespace(missed=0, resyncs=0, latency_samples=320.0)
        self.rt_results: list[str] = []
        self.active = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        FakePipeline.opened.append(self)

    def _run(self) -> None:
        if self._stop.wait(FakePipeline.delay):
            return
        while not self._stop.wait(0.008):
            if FakePipeline.input_on:
                self.stats.record(100_000)
            if FakePipeline.output_on:
                self.stats.outputs += 1

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        time.sleep(FakePipeline.close_takes)
        self._stop.set()
        self.active = False

    def latency(self) -> Latency:
        return Latency(24.0, 8.0, 20.0, 8.0)

    def describe(self) -> str:
        return f"fake {self.settings.model}"


class Notes:
    """Stands in for the sd_notify sender: time-stamped messages."""

    watchdog_interval = 0.1

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    def __call__(self, message: str) -> None:
        self.sent.append((time.time(), message))  # the clock of LogRecord.created

    def times(self, prefix: str, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [t for t, m in self.sent if m.startswith(prefix) and start <= t < end]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(service, "AudioPipeline", FakePipeline)
    monkeypatch.setattr(service.devices, "reinitialize", lambda: None)
    pair = SimpleNamespace(runtime="fake")
    monkeypatch.setattr(service.Daemon, "_load", staticmethod(
        lambda s: SimpleNamespace(pair=pair, channels=1, delay=384, reset=lambda: None, runtime=pair.runtime,
                                  label="fake", close=lambda: None)))
    monkeypatch.setattr(FakePipeline, "opened", [])
    for name in ("fail", "fail_once", "delay", "close_takes", "input_on", "output_on"):
        monkeypatch.setattr(FakePipeline, name, getattr(FakePipeline, name))
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield FakePipeline
    for s, handler in saved.items():
        signal.signal(s, handler)


def run_daemon(tmp_path, duration: float, script: list[tuple[float, Callable[[service.Daemon], None]]],
               config_text: str = "model: first\n",
               measure: Optional[list[str]] = None) -> tuple[int, service.Daemon, Notes]:
    """Run the loop for ``duration`` s in this (main) thread; ``script`` acts at given times.

    ``measure``: run with --measure, its report lines appended to this list.
    """
    cfg = tmp_path / "dtlnd.yaml"
    cfg.write_text(config_text)
    d = service.Daemon(config.load(cfg), cfg, {}, measure=measure is not None, duration=duration,
                       out=(measure.append if measure is not None else lambda line: None))
    notes = Notes()
    d.notify = notes

    def act() -> None:
        t0 = time.monotonic()
        for at, step in script:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            step(d)

    actor = threading.Thread(target=act, daemon=True)
    actor.start()
    status = d.run()
    actor.join(5)
    return status, d, notes


def times_of(caplog, text: str) -> list[float]:
    return [r.created for r in caplog.records if text in r.getMessage()]


def test_wedged_output_is_lost_audio_and_stops_the_watchdog(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "dtlnd")
    marks: dict[str, float] = {}

    def wedge(d):
        marks["wedged"] = time.time()
        fake.output_on = False

    def unwedge_once_lost(d):
        while d.pipeline is not None:
            time.sleep(0.005)
        fake.output_on = True

    status, d, notes = run_daemon(tmp_path, 3.5, [(0.5, wedge), (0.6, unwedge_once_lost)])
    assert status == 0
    lost = [r.getMessage() for r in caplog.records if "audio lost" in r.getMessage()]
    assert lost == ["audio lost: no output audio for 1.5 s; reopening with backoff"], lost
    t_lost = times_of(caplog, "audio lost")[0]
    assert t_lost - marks["wedged"] >= 1.5
    # The input ran on, but no ping from one interval after the wedge until the loss.
    assert not notes.times("WATCHDOG=1", marks["wedged"] + 0.2, t_lost)
    assert times_of(caplog, "audio resumed")


def test_ready_and_flowing_wait_for_new_callbacks_after_a_reopen(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "dtlnd")

    def kill_stream(d):
        fake.delay = 0.6  # the reopened streams start late
        d.pipeline.active = False

    status, d, notes = run_daemon(tmp_path, 3.0, [(0.5, kill_stream)])
    assert status == 0
    t_resumed = times_of(caplog, "audio resumed")[0]
    flowing = times_of(caplog, "audio flowing")
    assert len(flowing) == 2 and flowing[1] - t_resumed >= 0.55, (t_resumed, flowing)
    ready = notes.times("READY=1")
    assert len(ready) == 2 and ready[1] - t_resumed >= 0.55


def test_a_blocking_close_is_not_followed_by_a_burst_of_reports(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "dtlnd")

    def kill_stream(d):
        fake.close_takes = 2.5
        d.pipeline.active = False

    status, d, notes = run_daemon(tmp_path, 5.0, [(0.3, kill_stream)])
    assert status == 0
    t_back = times_of(caplog, "audio resumed")[0]
    reports = [t for t, m in notes.sent if m.startswith("STATUS=ns") and t >= t_back]
    assert len(reports) >= 2 and min(np.diff(reports)) > 0.5, np.round(np.diff(reports), 2)


def test_measure_fails_a_run_that_lost_audio(fake, tmp_path):
    lines: list[str] = []

    def kill_stream(d):
        d.pipeline.active = False

    status, d, notes = run_daemon(tmp_path, 2.0, [(0.5, kill_stream)], measure=lines)
    assert status == 1
    assert any(line.endswith("audio lost 1 times") for line in lines), lines
    assert lines[-1] == "  result: FAIL: xruns, deadline misses or lost audio"


def test_reload_while_the_device_is_gone_keeps_the_daemon_alive(fake, tmp_path, caplog):
    """SIGHUP during an unplug: neither the new nor the old settings open, and the retry loop goes on."""
    caplog.set_level(logging.DEBUG, "dtlnd")

    def unplug(d):
        fake.fail = DeviceError("input device 'mic' not found")
        d.pipeline.active = False

    def hup(d):
        (tmp_path / "dtlnd.yaml").write_text("model: second\n")
        d._on_hup()

    def replug(d):
        fake.fail = None

    status, d, notes = run_daemon(tmp_path, 3.0, [(0.3, unplug), (1.0, hup), (1.5, replug)])
    assert status == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("reload failed, back to the running configuration: input device") for m in messages)
    assert any(m.startswith("the running configuration does not open either") for m in messages)
    assert times_of(caplog, "audio resumed"), messages
    assert d.settings.model == "first"
    assert notes.times("WATCHDOG=1", times_of(caplog, "reload failed")[0]), "no pings while retrying"


def test_reload_with_a_portaudio_error_keeps_the_running_settings(fake, tmp_path, caplog):
    """An exception that is not a DtlndError (PortAudio's) must not end the daemon either."""
    caplog.set_level(logging.INFO, "dtlnd")

    def hup(d):
        (tmp_path / "dtlnd.yaml").write_text("model: second\n")
        fake.fail_once = RuntimeError("Error opening OutputStream: Device unavailable [PaErrorCode -9985]")
        d._on_hup()

    status, d, notes = run_daemon(tmp_path, 2.0, [(0.5, hup)])
    assert status == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("reload failed, back to the running configuration: Error opening" in m for m in messages), messages
    assert d.settings.model == "first"
    assert not times_of(caplog, "reloaded")

"""The supervisor loop of ``dtlnd run`` against a fake pipeline: no audio devices needed.

The fake stands in for `dtlnd.audio.AudioPipeline`: a thread bumps the
input and output counters every 8 ms, and the test switches either
direction off, kills the stream, or makes opening fail, to check what the
loop does about it (logs, sd_notify messages, reopening, SIGHUP reloads).
The same policies run on the real audio path in test_daemon_rig.py.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, ClassVar, Optional

import numpy as np
import pytest

from dtlnd import config, gil, service
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
    output_blocked = False  # a stopped output does not hold up the input here
    opened: ClassVar[list[FakePipeline]] = []

    def __init__(self, settings, processor, stats, on_finished=None) -> None:
        error, FakePipeline.fail_once = FakePipeline.fail_once or FakePipeline.fail, None
        if error is not None:
            raise error
        self.settings, self.stats = settings, stats
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
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(service, "AudioPipeline", FakePipeline)
    monkeypatch.setattr(service, "PushPipeline", FakePipeline)
    monkeypatch.setattr(service.devices, "reinitialize", lambda: None)
    monkeypatch.setattr(service.Daemon, "_load", staticmethod(
        lambda s: SimpleNamespace(runtime="fake", channels=1, delay=384, reset=lambda: None, label="fake",
                                  close=lambda: None)))
    monkeypatch.setenv("DTLND_RUNTIME_DIR", str(tmp_path / "run"))
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

    status, _d, notes = run_daemon(tmp_path, 3.5, [(0.5, wedge), (0.6, unwedge_once_lost)])
    assert status == 0
    lost = [r.getMessage() for r in caplog.records if "audio lost" in r.getMessage()]
    assert lost == ["audio lost: no output audio for 1.5 s; reopening with backoff"], lost
    t_lost = times_of(caplog, "audio lost")[0]
    assert t_lost - marks["wedged"] >= 1.5
    # The input ran on, but at most one ping after the wedge until the loss: one may still count
    # output that moved just before it (the loop can be late on a loaded machine), none after.
    pings = notes.times("WATCHDOG=1", marks["wedged"], t_lost)
    assert len(pings) <= 1, [round(t - marks["wedged"], 2) for t in pings]
    assert times_of(caplog, "audio resumed")


def test_ready_and_flowing_wait_for_new_callbacks_after_a_reopen(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "dtlnd")

    def kill_stream(d):
        fake.delay = 0.6  # the reopened streams start late
        d.pipeline.active = False

    status, _d, notes = run_daemon(tmp_path, 3.0, [(0.5, kill_stream)])
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

    status, _d, notes = run_daemon(tmp_path, 5.0, [(0.3, kill_stream)])
    assert status == 0
    t_back = times_of(caplog, "audio resumed")[0]
    reports = [t for t, m in notes.sent if m.startswith("STATUS=ns") and t >= t_back]
    assert len(reports) >= 2 and min(np.diff(reports)) > 0.5, np.round(np.diff(reports), 2)


def test_measure_fails_a_run_that_lost_audio(fake, tmp_path):
    lines: list[str] = []

    def kill_stream(d):
        d.pipeline.active = False

    status, _d, _notes = run_daemon(tmp_path, 2.0, [(0.5, kill_stream)], measure=lines)
    assert status == 1
    assert any(line.endswith("audio stream lost 1 times") for line in lines), lines
    assert lines[-1] == "  result: FAIL: audio stream lost 1 times"


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

    status, d, _notes = run_daemon(tmp_path, 2.0, [(0.5, hup)])
    assert status == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("reload failed, back to the running configuration: Error opening" in m for m in messages), messages
    assert d.settings.model == "first"
    assert not times_of(caplog, "reloaded")


# -- reporting: every counter reaches every report ------------------------------------------------


def _bump(**fields):
    """A script step that adds to the stats counters, as the callbacks and the bridge do."""
    def step(d):
        for name, n in fields.items():
            setattr(d.stats, name, getattr(d.stats, name) + n)
    return step


@pytest.mark.parametrize("fields, in_line, in_status, cause, key", [
    ({"gaps": 3, "gap_samples": 3 * 3200}, "gaps 3 (600 ms)", "gaps 3", "lost audio (600 ms in 3 gaps)", "gaps"),
    ({"missed": 2}, "misses 2", "misses 2", "deadline misses 2", "misses"),
    ({"resyncs": 1}, "re-centred 1", None, "buffer re-centred 1 times", "resyncs"),
    ({"slewed": 2}, "re-centred 0, steps slewed back 2", None,
     "delay steps slewed back 2 (a cycle lost, or the clocks' drift)", "slewed_steps"),
    ({"late": 4}, "late 4", None, "late blocks 4", "late"),
    ({"input_overflows": 1}, "xruns in 1 out 0", "xruns 1", "xruns (input overflow 1, output underflow 0)", None),
    ({"callback_errors": 5}, "errors 5", "errors 5", "callback errors 5", "callback_errors"),
])
def test_each_counter_is_in_every_report_and_fails_the_run(fake, tmp_path, fields, in_line, in_status, cause, key):
    lines: list[str] = []
    states: list[dict] = []

    def read_state(d):
        states.append(json.loads(d.state_file.path.read_text()))

    status, d, notes = run_daemon(tmp_path, 2.5, [(0.4, _bump(**fields)), (1.9, read_state)], measure=lines)
    assert status == 1
    assert in_line in lines[1], lines[1]
    assert lines[-1] == f"  result: FAIL: {cause}", lines
    if in_status:
        assert any(in_status in m for _, m in notes.sent if m.startswith("STATUS=ns")), notes.sent
    if key:
        assert states[0][key] == fields[next(iter(fields))], states[0]
    assert not d.state_file.path.exists(), "the state file outlived the daemon"


def test_engine_counters_are_reported(fake, tmp_path, monkeypatch):
    """The processor's own counters (non-finite input, state resets), read through getattr."""
    lines: list[str] = []

    def poison(d):
        d.processor.nonfinite, d.processor.resets = 1600, 1

    status, _d, notes = run_daemon(tmp_path, 1.8, [(0.3, poison)], measure=lines)
    assert status == 1
    assert "non-finite 1600 | resets 1" in lines[0], lines[0]
    assert lines[-1] == "  result: FAIL: non-finite input samples 1600; model state resets 1"
    assert any("resets 1" in m for _, m in notes.sent if m.startswith("STATUS=ns"))


def test_a_clean_run_is_ok(fake, tmp_path):
    lines: list[str] = []
    status, _d, _notes = run_daemon(tmp_path, 1.5, [], measure=lines)
    assert status == 0 and lines[-1] == "  result: OK", lines


def test_callback_errors_are_logged_and_last_error_is_left_to_the_callbacks(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, "dtlnd")

    def fail(d):
        d.stats.last_error = ValueError("boom")
        d.stats.callback_errors += 1
        d.pipeline.active = False

    _status, d, _notes = run_daemon(tmp_path, 2.0, [(0.4, fail)])
    messages = [r.getMessage() for r in caplog.records]
    assert "audio callback error (1 so far): boom" in messages, messages
    assert "audio lost: the stream stopped (callback error: boom); reopening with backoff" in messages
    assert isinstance(d.stats.last_error, ValueError), "the main thread reset the callbacks' last_error"


def test_state_file_follows_the_run(fake, tmp_path):
    from dtlnd import status as status_mod

    seen: list[tuple[dict, object]] = []

    def look(d):
        seen.append(status_mod.read(d.state_file.path))

    _status, d, _notes = run_daemon(tmp_path, 3.3, [(1.5, look), (3.0, look)])
    (first, stale1), (second, stale2) = seen
    assert stale1 is None and stale2 is None
    assert second["blocks"] > first["blocks"] > 0
    assert first["state"] == "flowing" and first["runtime"] == "fake" and first["devices"] == "fake first"
    assert first["pid"] == os.getpid() and first["rss_kib"] > 0
    assert not d.state_file.path.exists()


def test_switch_interval_is_short_during_the_run_and_python_s_after(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("DTLND_SWITCH_INTERVAL", raising=False)
    before = sys.getswitchinterval()
    seen: list[float] = []
    run_daemon(tmp_path, 1.0, [(0.5, lambda d: seen.append(sys.getswitchinterval()))])
    assert seen == [gil.SWITCH_INTERVAL] and before > 5 * gil.SWITCH_INTERVAL
    assert sys.getswitchinterval() == before


def test_a_first_open_that_fails_leaves_the_interpreter_as_it_was(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("DTLND_GC", raising=False)
    monkeypatch.delenv("DTLND_SWITCH_INTERVAL", raising=False)
    before = sys.getswitchinterval()
    fake.fail = DeviceError("input device 'mic' not found")
    try:
        with pytest.raises(DeviceError):
            run_daemon(tmp_path, 1.0, [])
        assert gc.isenabled() and sys.getswitchinterval() == before
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_bad_switch_interval_is_one_line_and_exit_78(tmp_path):
    env = dict(os.environ, DTLND_SWITCH_INTERVAL="fast")
    r = subprocess.run([sys.executable, "-m", "dtlnd", "run", "--input", "nonexistent"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "DTLND_SWITCH_INTERVAL='fast'" in r.stderr and "Traceback" not in r.stderr


def test_gc_is_frozen_and_off_during_the_run_and_on_after(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("DTLND_GC", raising=False)
    seen: list[tuple[bool, int]] = []
    try:
        _status, _d, _notes = run_daemon(tmp_path, 1.0, [(0.5, lambda d: seen.append((gc.isenabled(),
                                                                                     gc.get_freeze_count())))])
        assert seen == [(False, seen[0][1])] and seen[0][1] > 1000, seen
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


# -- --plot ------------------------------------------------------------------------------


def test_plot_is_written_at_the_end(fake, tmp_path):
    png = tmp_path / "run.png"
    cfg = tmp_path / "dtlnd.yaml"
    cfg.write_text("model: first\n")
    d = service.Daemon(config.load(cfg), cfg, {}, measure=True, duration=3.2, out=lambda line: None, plot=png)
    d.notify = Notes()
    assert d.run() == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d.timeline is not None and d.timeline.count >= 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.png")] == []


def _run_cli(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {pre}from dtlnd.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))


def test_plot_path_not_writable_fails_before_the_run(tmp_path):
    r = _run_cli("run", "--measure", "--plot", str(tmp_path / "no" / "such" / "run.png"), "--input", "nosuch")
    assert r.returncode == 73, r.stderr
    assert r.stderr.count("\n") == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_plot_without_matplotlib_names_the_extra(tmp_path):
    """matplotlib made unimportable (as in a Pi install without the extra): exit 69 before any device opens."""
    r = _run_cli("run", "--measure", "--plot", str(tmp_path / "run.png"), "--input", "nosuch",
                 pre="sys.modules['matplotlib'] = None; ")
    assert r.returncode == 69, r.stderr
    assert r.stderr.count("\n") == 1 and "dtlnd[eval]" in r.stderr, r.stderr
    assert not (tmp_path / "run.png").exists()


def test_plot_without_measure_is_a_usage_error(tmp_path):
    r = _run_cli("run", "--plot", str(tmp_path / "run.png"), "--input", "nosuch")
    assert r.returncode == 64 and "--plot needs --measure" in r.stderr and r.stderr.count("\n") == 1, r.stderr

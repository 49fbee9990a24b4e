"""``dtlnd status`` and the state file, without audio: exit statuses, staleness, RSS without JACK's memory.

The daemon's side is exercised on the rig in test_status_rig.py; here the
file is written by `StateFile` itself and read by the real command line in
a subprocess.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from dtlnd import status

REPO = Path(__file__).resolve().parent.parent


def dtlnd_status(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DTLND_RUNTIME_DIR=str(folder), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dtlnd", "status", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def state(pid: int, updated: float, blocks: int = 1234) -> dict:
    return {"pid": pid, "updated": updated, "uptime_s": 75.0, "state": "flowing", "mode": "ns",
            "model": "dtln_ns_quant", "runtime": "ai-edge-litert", "devices": "input 'mic' -> output 'loop'",
            "blocks": blocks, "engine": {"mean_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0, "budget_share": 0.25},
            "xruns": {"input": 0, "output": 2}, "misses": 3, "gaps": 1, "lost_ms": 200.0, "slewed_steps": 4,
            "latency_ms": {"total": 60.0, "algorithmic": 24.0, "input": 8.0, "buffer": 20.0, "output": 8.0},
            "extra": {"alignment": {"describe": "align locked: lag 41.0 ms", "applied_ms": 40.0}},
            "cpu_percent": 12.5, "rss_kib": 51200}


def test_no_daemon_is_one_line_and_exit_3(tmp_path):
    r = dtlnd_status(tmp_path / "empty")
    assert r.returncode == status.NOT_RUNNING == 3
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and "not running" in r.stderr, r.stderr


def test_running_daemon_is_shown_and_its_json_has_blocks(tmp_path):
    folder = tmp_path / "run"
    assert status.StateFile(folder).write(state(os.getpid(), time.time())) is None
    assert (folder / status.FILE_NAME).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in folder.iterdir()] == [status.FILE_NAME], "a temporary file was left behind"
    r = dtlnd_status(folder, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["blocks"] == 1234
    r = dtlnd_status(folder)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for shown in ("dtlnd flowing", "up 1m 15s", "blocks 1234", "xruns in 0 out 2", "misses 3",
                  "gaps 1 (200 ms lost)", "steps slewed back 4",
                  "latency: 60.0 ms", "alignment: align locked: lag 41.0 ms", "RSS 50.0 MiB"):
        assert shown in text, (shown, text)


def test_a_dead_daemons_file_is_stale(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status.StateFile(tmp_path).write(state(dead.pid, time.time()))
    r = dtlnd_status(tmp_path, "--json")
    assert r.returncode == status.STALE == 1
    assert r.stdout == "" and "stale" in r.stderr and f"pid {dead.pid}" in r.stderr, r.stderr


def test_a_file_not_updated_is_stale_even_with_a_live_pid(tmp_path):
    status.StateFile(tmp_path).write(state(os.getpid(), time.time() - 2 * status.STALE_AFTER))
    r = dtlnd_status(tmp_path)
    assert r.returncode == 1 and "has not updated it" in r.stderr, r.stderr


def test_watch_repeats_until_the_daemon_goes(tmp_path):
    """--watch --json prints a fresh state every second and ends (exit 3) when the file is removed."""
    f = status.StateFile(tmp_path)
    f.write(state(os.getpid(), time.time(), blocks=1))
    env = dict(os.environ, DTLND_RUNTIME_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "dtlnd", "status", "--json", "--watch"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    seen = [json.loads(p.stdout.readline())["blocks"]]
    f.write(state(os.getpid(), time.time(), blocks=2))
    seen.append(json.loads(p.stdout.readline())["blocks"])
    f.remove()
    assert p.wait(10) == 3
    assert seen[-1] == 2 and seen[0] == 1, seen


def test_runtime_dir_order(monkeypatch):
    monkeypatch.delenv("DTLND_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/dtlnd")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert status.runtime_dirs() == [Path("/run/dtlnd"), Path("/run/user/1000/dtlnd"), Path("/run/dtlnd")]
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert status.runtime_dirs()[0] == Path("/run/user/1000/dtlnd")
    monkeypatch.setenv("DTLND_RUNTIME_DIR", "/tmp/x")
    assert status.runtime_dirs() == [Path("/tmp/x")]


def _rollup_rss() -> int:
    text = Path("/proc/self/smaps_rollup").read_text()
    return int(text.split("\nRss:")[1].split("kB")[0])


def _touch_shm(name: str, size: int) -> tuple[int, int]:
    """Map and touch ``size`` bytes of /dev/shm/NAME: (kernel's RSS growth, ours), KiB."""
    path = Path("/dev/shm") / name
    with open(path, "w+b") as f:
        f.truncate(size)
        m = mmap.mmap(f.fileno(), size)
    try:
        before_kernel, before_ours = _rollup_rss(), status.ProcessUsage.rss_kib()
        m.write(b"\1" * size)  # touch every page
        after_kernel, after_ours = _rollup_rss(), status.ProcessUsage.rss_kib()
    finally:
        m.close()
        path.unlink()
    assert before_ours is not None and after_ours is not None
    return after_kernel - before_kernel, after_ours - before_ours


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists() or not Path("/dev/shm").is_dir(),
                    reason="needs Linux /proc/self/smaps_rollup and /dev/shm")
def test_rss_leaves_out_jack_shared_memory():
    """32 MiB touched in a /dev/shm/jack-* mapping raise the kernel's RSS by that much, not ours;
    the same in another /dev/shm file raise both (the control)."""
    size = 32 << 20
    tag = uuid.uuid4().hex[:8]
    kernel, ours = _touch_shm(f"jack-dtlnd-test-{tag}", size)
    print(f"\njack segment: kernel RSS +{kernel} KiB, ours +{ours} KiB")
    assert kernel >= 30 << 10 and abs(ours) < 4 << 10
    kernel, ours = _touch_shm(f"dtlnd-test-{tag}", size)
    print(f"other segment: kernel RSS +{kernel} KiB, ours +{ours} KiB")
    assert kernel >= 30 << 10 and ours >= 30 << 10


def test_cpu_percent_follows_work():
    usage = status.ProcessUsage()
    time.sleep(0.3)
    idle = usage.cpu_percent()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass
    busy = usage.cpu_percent()
    print(f"\nidle {idle:.1f}%, busy {busy:.1f}%")
    # A spinning thread gets a whole CPU on an idle machine, less on a loaded one.
    assert idle < 30 and busy > idle + 10 and busy <= 110


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_cached_rss_agrees_with_the_full_reading():
    """The report's cheap figure (statm less the JACK share read a minute ago) is the full reading's."""
    usage = status.ProcessUsage()
    cached, full = usage.rss_cached(), status.ProcessUsage.rss_kib()
    assert cached is not None and full is not None
    assert abs(cached - full) < 2048, (cached, full)
    grown = mmap.mmap(-1, 8 << 20)  # 8 MiB of fresh pages (not memory the allocator had resident already)
    grown.write(b"\1" * (8 << 20))  # touched: the statm part follows at once
    again = usage.rss_cached()
    grown.close()
    assert again is not None and again - cached >= 7 << 10, (cached, again)

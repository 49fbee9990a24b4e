"""The user-space audio rig (shared/alsa-rig) for tests of ``dtlnd run``.

A `Rig` is one jackd (dummy backend, 16 kHz, 128-frame periods) under its
own server name, plus the ALSA PCMs of ``asoundrc.rig`` that stand in for
the microphone and for hw:Loopback,0/1.  Everything that touches it (the
daemon, ``arecord``, ``aplay``) runs as a subprocess with `Rig.env`:
PortAudio enumerates ALSA devices once per process, so the environment has
to be in place before it starts.

The extra PCM ``probe_mic_loop`` captures the microphone bus and the
loopback in the same JACK cycle: one ``arecord`` of it gives the
end-to-end delay by cross-correlation.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np
import pytest

from dtlnd.constants import RATE

REQUIRED_TOOLS = ("jackd", "jack_load", "jack_wait", "arecord", "aplay")
LATE_CLIENT = re.compile(r"JackEngine::XRun: client = (\S+) was not finished")
CLOCK_SLIP = "JackTimedDriver::Process XRun"

PROBE_PCM = """
pcm.probe_mic_loop {
    type jack
    name "probe_mic_loop"
    align_psize false
    capture_ports { 0 "mic_bus:output" 1 "aloop:output" }
}
"""


def rig_dir(shared: Path) -> Path:
    return Path(os.environ.get("DTLND_RIG_DIR", shared / "alsa-rig"))


def require_rig(shared: Path) -> Path:
    """The rig's folder; skip (or, with DTLND_REQUIRE_AUDIO_RIG=1, fail) when it cannot run here."""
    missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
    folder = rig_dir(shared)
    if not (folder / "rig.sh").exists():
        missing.append(str(folder / "rig.sh"))
    if ctypes.util.find_library("portaudio") is None:  # sounddevice's Linux wheel ships none
        missing.append("libportaudio2")
    if missing:
        why = f"audio rig not available: missing {', '.join(missing)}"
        if os.environ.get("DTLND_REQUIRE_AUDIO_RIG") == "1":
            pytest.fail(why + " (DTLND_REQUIRE_AUDIO_RIG=1)")
        pytest.skip(why)
    return folder


class Rig:
    """One jackd + buses under a unique server name, with its run folder in ``root``."""

    def __init__(self, folder: Path, root: Path, label: str = "t", rate: int = RATE, period: int = 128) -> None:
        self.folder = folder
        self.rate = rate
        self.server = f"dtlnd_{label}_{uuid.uuid4().hex[:8]}"
        self.run_dir = root / "rig"
        self.alsa_conf = root / "asoundrc.test"
        # The rig's PCMs plus the probe; asoundrc.rig itself pulls in alsa.conf.
        self.alsa_conf.write_text(f"<{folder / 'asoundrc.rig'}>\n{PROBE_PCM}")
        base = dict(os.environ, RIG_JACK_SERVER=self.server, RIG_RUN_DIR=str(self.run_dir), RIG_RATE=str(rate),
                    RIG_PERIOD=str(period))
        self._script_env = base
        out = subprocess.run([str(folder / "rig.sh"), "env"], env=base, check=True, capture_output=True,
                             text=True).stdout
        env = dict(base)
        for line in out.splitlines():  # export NAME='value'
            name, _, value = line[len("export "):].partition("=")
            env[name] = value.strip("'")
        env["ALSA_CONFIG_PATH"] = str(self.alsa_conf)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("JOURNAL_STREAM", None)
        env.pop("RIG_IN_FILE", None)
        self.env = env

    def _script(self, action: str, timeout: float) -> None:
        r = subprocess.run([str(self.folder / "rig.sh"), action], env=self._script_env, capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"rig.sh {action} failed ({r.returncode}): {r.stdout}{r.stderr}")

    def start(self) -> None:
        self._script("start", 30)

    def stop(self) -> None:
        self._script("stop", 40)

    def __enter__(self) -> Rig:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def jackd_pid(self) -> int:
        return int((self.run_dir / "jackd.pid").read_text())

    def log_size(self) -> int:
        """Where jackd's log ends now, for `late_clients` and `clock_slips` later."""
        return (self.run_dir / "jackd.log").stat().st_size

    def late_clients(self, since: int = 0, until: Optional[int] = None) -> list[str]:
        """The JACK clients jackd found unfinished at the end of a cycle, in bytes ``since:until`` of its log.

        In JACK2's asynchronous mode a late client's ports skip or repeat that cycle, so its audio is
        damaged although no ALSA call reports an xrun.  Without real-time scheduling (a container) a
        CPU hog makes this happen now and then, to the daemon's client or to a test's ``arecord``.
        """
        return LATE_CLIENT.findall(self._log(since, until))

    def clock_slips(self, since: int = 0, until: Optional[int] = None) -> int:
        """How often the dummy driver woke too late for a cycle, in bytes ``since:until`` of jackd's log.

        It then starts its timeline afresh from that late moment (JackTimedDriver::ProcessWait), so the
        rig's clock falls behind the system's by the lateness: time without samples, which the daemon
        rightly counts as a gap.
        """
        return self._log(since, until).count(CLOCK_SLIP)

    def trouble(self, since: int = 0, until: Optional[int] = None) -> str:
        """jackd's own timing trouble in bytes ``since:until`` of its log, in words ("" when it kept time).

        Clock slips and late clients damage or drop audio that the daemon then rightly reports (gaps,
        blocks dropped to re-centre), although the daemon did nothing wrong.  On this shared VM even a
        bare passthrough program sees them in about half of its 16 s runs at busy times.
        """
        slips, late = self.clock_slips(since, until), sorted(set(self.late_clients(since, until)))
        return "; ".join(([f"{slips} clock slip(s)"] if slips else [])
                         + ([f"clients late: {', '.join(late)}"] if late else []))

    def _log(self, since: int, until: Optional[int]) -> str:
        return (self.run_dir / "jackd.log").read_bytes()[since:until].decode(errors="replace")

    def with_env(self, **extra: str) -> dict[str, str]:
        return dict(self.env, **extra)


# -- processes ------------------------------------------------------------------

_started: list[subprocess.Popen] = []  # every daemon, arecord and aplay, for `kill_leftovers`


def kill_leftovers() -> None:
    """Kill what a failed test left running (it would hold the rig's PCMs)."""
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
            p.wait(10)


class Proc:
    """A subprocess whose stdout and stderr lines are collected, time-stamped, by threads."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Optional[Path] = None) -> None:
        self.args = list(args)
        self.started = time.monotonic()
        self.p = subprocess.Popen(self.args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        _started.append(self.p)
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                         for s, lines in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._readers:
            t.start()

    def _read(self, stream, lines: list) -> None:
        for line in stream:
            with self._cond:
                lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        stream.close()

    @property
    def pid(self) -> int:
        return self.p.pid

    @property
    def stdout(self) -> str:
        return "\n".join(line for _, line in self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.err)

    def wait_for(self, pattern: str, timeout: float = 15.0, stream: str = "err", after: float = 0.0) -> str:
        """The first line (logged at or after ``after``) matching ``pattern``; fail on timeout or exit."""
        rx = re.compile(pattern)
        lines = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in lines:
                    if t >= after and rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    raise AssertionError(f"no line matching {pattern!r} in {timeout} s; exit status "
                                         f"{self.p.poll()}; stderr:\n{self.stderr}\nstdout:\n{self.stdout}")
                self._cond.wait(min(left, 0.1))

    def lines(self, pattern: str, stream: str = "err") -> list[tuple[float, str]]:
        rx = re.compile(pattern)
        with self._cond:
            return [(t, line) for t, line in (self.err if stream == "err" else self.out) if rx.search(line)]

    def signal(self, sig: int) -> float:
        t = time.monotonic()
        self.p.send_signal(sig)
        return t

    def wait(self, timeout: float = 15.0) -> int:
        rc = self.p.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        for t in self._readers:
            t.join(5)


def daemon(rig: Rig, *args: object, env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None) -> Proc:
    """``dtlnd run ARGS`` as a subprocess on the rig."""
    return Proc([sys.executable, "-m", "dtlnd", "run", *map(str, args)], env or rig.env, cwd)


class Recorder:
    """``arecord`` of a rig PCM into a raw float32 file; `stop` returns the samples (frames x channels)."""

    def __init__(self, rig: Rig, path: Path, pcm: str = "rig_loop_rec", channels: int = 1,
                 period_us: Optional[int] = None) -> None:
        """``period_us``: arecord's period, so that `frames` lags the loopback by about that much at most."""
        self.path, self.channels = path, channels
        self.started = time.monotonic()
        period = ["-F", str(period_us)] if period_us else []
        self.p = subprocess.Popen(["arecord", "-q", "-D", pcm, "-f", "FLOAT_LE", "-r", str(rig.rate), "-c",
                                   str(channels), *period, "-t", "raw", str(path)], env=rig.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _started.append(self.p)

    def frames(self) -> int:
        """How many frames are in the file so far."""
        return self.path.stat().st_size // (4 * self.channels) if self.path.exists() else 0

    def samples(self) -> np.ndarray:
        x = np.fromfile(self.path, "<f4")
        return x[: len(x) - len(x) % self.channels].reshape(-1, self.channels)

    def stop(self) -> np.ndarray:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
        err = self.p.stderr.read() if self.p.stderr else ""
        if self.p.stderr:
            self.p.stderr.close()
        assert self.p.returncode in (0, 1, -signal.SIGINT), f"arecord failed ({self.p.returncode}): {err}"
        return self.samples()


def play(rig: Rig, wav: Path, pcm: str = "rig_src") -> subprocess.Popen:
    """``aplay`` ``wav`` into a rig PCM, in the background."""
    p = subprocess.Popen(["aplay", "-q", "-D", pcm, str(wav)], env=rig.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _started.append(p)
    return p


# -- systemd's notify socket ----------------------------------------------------------


class NotifySocket:
    """An AF_UNIX datagram socket that collects sd_notify messages, time-stamped."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._cond:
                for line in data.decode(errors="replace").splitlines():
                    self.messages.append((now, line))
                self._cond.notify_all()

    def env(self, watchdog_usec: int = 1_000_000) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(watchdog_usec)}

    def wait_for(self, prefix: str, timeout: float = 15.0, after: float = 0.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, m in self.messages:
                    if t >= after and m.startswith(prefix):
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {prefix!r} in {timeout} s; got {self.messages}")
                self._cond.wait(min(left, 0.1))

    def times(self, prefix: str, start: float = 0.0, end: float = float("inf")) -> list[float]:
        with self._cond:
            return [t for t, m in self.messages if m.startswith(prefix) and start <= t < end]

    def close(self) -> None:
        self._done.set()
        self._thread.join(2)
        self.sock.close()


# -- runs that must be clean ---------------------------------------------------------------

TRIES = 4  # runs of a test that needs one the daemon calls clean
LATE_ONLY = re.compile(r"result: FAIL: (late blocks \d+)$", re.MULTILINE)  # the summary's only cause
T = TypeVar("T")


def until_clean(rig: Rig, attempt: Callable[[int], T], stdout: Callable[[T], str],
                check: Optional[Callable[[T], bool]] = None, tries: int = TRIES) -> T:
    """``attempt(i)`` until a clean run: the daemon's ``--measure`` summary (``stdout(result)``) says
    ``result: OK`` and the test's own comparison (``check(result)``, when given) holds.

    A test of what clean audio looks like (exactness, convergence, delay) needs such a run; a run
    that is not clean is tried again, up to ``tries``.  A run whose audio is wrong although the
    daemon said OK and jackd kept time (`Rig.trouble`) fails the test at once: that is a defect
    the daemon did not notice.  If no run is clean, the test fails when jackd kept time during any
    of them (the daemon failed on a quiet rig); otherwise it is skipped, naming what jackd logged:
    the rig, not the daemon, lost time.  A FAIL on a quiet rig followed by a clean run is a warning.
    A FAIL for late blocks alone (`LATE_ONLY`: an engine block over 8 ms, with nothing missed or
    lost) counts with the rig's trouble: on this shared VM the daemon's process is sometimes not
    scheduled for a few ms, which jackd's log does not show and the daemon reports truthfully.
    """
    quiet: list[str] = []
    trouble = ""
    for i in range(tries):
        since = rig.log_size()
        result = attempt(i)
        out = stdout(result)
        said_ok = "result: OK" in out
        if said_ok and (check is None or check(result)):
            if quiet:
                warnings.warn(f"the daemon said FAIL on a quiet rig before a clean run:\n{quiet[-1]}", stacklevel=2)
            return result
        trouble = rig.trouble(since) or ("the machine: " + m.group(1) if (m := LATE_ONLY.search(out)) else "")
        assert trouble or not said_ok, f"wrong audio although the daemon said OK and jackd kept time:\n{out}"
        if not trouble:
            quiet.append(out)
    assert not quiet, f"the daemon said FAIL in {len(quiet)} of {tries} runs while jackd kept time:\n{quiet[-1]}"
    pytest.skip(f"jackd or the machine lost time in all {tries} runs (the last: {trouble}): no clean run to check")


# -- signals ----------------------------------------------------------------------------


def write_raw(path: Path, x: np.ndarray) -> Path:
    """Raw float32 little-endian, interleaved: what ``$RIG_IN_FILE`` holds."""
    np.ascontiguousarray(x, "<f4").tofile(path)
    return path


def lag(y: np.ndarray, x: np.ndarray, max_lag: Optional[int] = None) -> int:
    """The delay ``d`` (samples, >= 0 when ``max_lag`` is given) that best aligns ``y[n + d]`` with ``x[n]``."""
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64)
    n = 1 << (len(x) + len(y) - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    if max_lag is not None:
        return int(np.argmax(c[: max_lag + 1]))
    k = int(np.argmax(np.abs(c)))
    return k - n if k > n // 2 else k


def sound_runs(x: np.ndarray, block: int = 128) -> list[tuple[int, int]]:
    """(start, end) sample ranges of consecutive blocks that are not all exact zeros."""
    n = len(x) // block
    loud = np.any(x[: n * block].reshape(n, block) != 0, axis=1)
    runs, start = [], None
    for i, v in enumerate(loud):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start * block, i * block))
            start = None
    if start is not None:
        runs.append((start * block, n * block))
    return runs


# -- helpers for the fault and format tests ------------------------------------------------------


def exact_at(y: np.ndarray, ref: np.ndarray, lo: int, hi: int) -> tuple[int, bool]:
    """The lag of ``y[lo:hi]`` in ``ref`` (``y[n] == ref[n - lag]``) and whether the stretch matches exactly."""
    seg = y[lo:hi]
    d = lag(y[max(0, lo - RATE):hi + RATE], ref) + max(0, lo - RATE)
    if lo - d < 0 or hi - d > len(ref):
        return d, False
    return d, bool(np.array_equal(seg, ref[lo - d:hi - d]))


def carries_exactly(y: np.ndarray, ref: np.ndarray, edge: int) -> bool:
    """Whether the recording ``y`` holds ``ref`` bit for bit where it sounds (less ``edge`` samples at each end).

    At least two seconds must compare.
    """
    runs = sound_runs(y)
    if not runs:
        return False
    d = lag(y, ref)
    lo, hi = max(runs[0][0], d) + edge, min(runs[-1][1], d + len(ref)) - edge
    return hi - lo > 2 * RATE and lo >= d and bool(np.array_equal(y[lo:hi], ref[lo - d:hi - d]))


def summary_field(stdout: str, pattern: str) -> tuple[int, ...]:
    """The integers of the first summary line matching ``pattern`` (groups), or an assertion error."""
    m = re.search(pattern, stdout, re.MULTILINE)
    assert m, f"no {pattern!r} in the summary:\n{stdout}"
    return tuple(int(g) for g in m.groups())

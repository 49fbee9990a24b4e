"""Shared parts of the measurement tools in this folder (not a script).

What a tool measures on the rig, in one place:

* CPU: utime+stime of ``/proc/PID/stat`` for the process and all its
  descendants (all threads are in a process's own figures; a helper process
  such as the peer's ``aec_mp.py`` stage 2 is a descendant).
* RSS without JACK: VmRSS less the Rss of the ``/dev/shm/jack*`` mappings
  (every JACK client maps about 100 MB of the server's shared memory; a Pi
  without JACK has none).  Summed over the process tree, so pages a forked
  child shares are counted twice; PSS (also reported) does not double count.
* Delay and glitches: `ProbeMonitor` records the rig's ``probe_mic_loop``
  PCM, which captures the microphone bus and the loopback in the same JACK
  cycle, and cross-correlates them in 2 s windows.  A delay step is a change
  of at least `STEP_SAMPLES` between consecutive windows; a dropout is a run
  of exact-zero 128-sample loopback blocks that starts right after a block
  with signal in it (a drop to digital silence mid-signal: what an underflow
  or a lost block looks like).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dtlnd.constants import RATE, SHIFT  # noqa: E402
from tests.rig import Proc, Rig  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WINDOW = 2 * RATE  # samples per delay estimate
MAX_LAG = RATE // 4  # delays searched: 0..250 ms
STEP_SAMPLES = 16  # 1 ms: a smaller change is the estimate's own wobble
MIN_PEAK = 0.3  # normalised correlation below this: the window says nothing about delay
SIGNAL = 1e-3  # a block whose peak is above this "has signal"

# The looped source: (mic, reference) pairs from shared/audio, 2 channels.
SOURCE_FILES = (
    ("DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav", "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_lpb.wav"),
    ("9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav", "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav"),
    ("airconditioning.wav", None),
)


def shared_dir(given: Optional[str] = None) -> Path:
    """The shared folder: ``--shared``, else ``$DTLND_SHARED``, else ``shared/`` next to the checkout."""
    for p in (given, os.environ.get("DTLND_SHARED"), REPO.parent / "shared", "/work/shared"):
        if p and (Path(p) / "models").is_dir():
            return Path(p)
    sys.exit("shared folder not found: pass --shared DIR or set DTLND_SHARED (it holds models/ and audio/)")


# -- /proc figures -------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (all threads, exited ones included) summed over ``pids``."""
    total = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLK_TCK


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of ``pid`` (its threads alive now): (name, utime+stime seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (stat[stat.index("(") + 1:stat.rindex(")")],
                               (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def thread_shares(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  seconds: float) -> list[tuple[str, float]]:
    """CPU seconds per second of each thread between two `thread_cpu` samples, busiest first (named by
    thread name and its rank among threads of that name, oldest first)."""
    rows = []
    for tid, (name, cpu) in sorted(after.items()):
        rows.append((name, tid, (cpu - before.get(tid, (name, 0.0))[1]) / seconds))
    seen: dict[str, int] = {}
    named = []
    for name, _tid, share in rows:
        seen[name] = seen.get(name, 0) + 1
        named.append((f"{name}#{seen[name]}", share))
    return sorted(named, key=lambda r: -r[1])


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over ``pids``, each less its ``/dev/shm/jack*`` mappings."""
    rss = pss = 0
    for p in pids:
        try:
            text = Path(f"/proc/{p}/smaps").read_text()
        except OSError:
            continue
        jack = False
        for line in text.splitlines():
            head = line.split(None, 1)[0]
            if not head.endswith(":"):  # a mapping's header line: address perms offset dev inode path
                parts = line.split(None, 5)
                jack = len(parts) == 6 and parts[5].startswith("/dev/shm/jack")
            elif not jack and head in ("Rss:", "Pss:"):
                kb = int(line.split()[1])
                if head == "Rss:":
                    rss += kb
                else:
                    pss += kb
    return rss / 1024, pss / 1024


# -- the looped source ------------------------------------------------------------------


def source_signal(shared: Path) -> np.ndarray:
    """About 32 s of speech as (frames, 2) float32: mic, reference; near-end, far-end echo, noisy speech."""
    parts = []
    for mic_name, ref_name in SOURCE_FILES:
        mic, _ = sf.read(shared / "audio" / mic_name, dtype="float32")
        ref = sf.read(shared / "audio" / ref_name, dtype="float32")[0] if ref_name else np.zeros_like(mic)
        n = min(len(mic), len(ref))
        parts.append(np.stack([mic[:n], ref[:n]], axis=1))
    return np.concatenate(parts)


class LoopPlayer:
    """``aplay`` into ``rig_src`` fed from a pipe, the source repeated until `stop` (paced by the rig clock)."""

    def __init__(self, rig: Rig, signal: np.ndarray) -> None:
        self.data = np.ascontiguousarray(signal, "<f4").tobytes()
        self.p = subprocess.Popen(["aplay", "-q", "-D", "rig_src", "-t", "raw", "-f", "FLOAT_LE", "-r", str(RATE),
                                   "-c", "2", "-"], env=rig.env, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self.p.stdin is not None
        chunk = 4096 * 8
        try:
            while not self._stop.is_set():
                for i in range(0, len(self.data), chunk):
                    if self._stop.is_set():
                        break
                    self.p.stdin.write(self.data[i:i + chunk])
        except (BrokenPipeError, ValueError, OSError):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
        self._thread.join(5)


# -- delay and glitches from the probe ----------------------------------------------------


@dataclass
class ProbeFigures:
    """What `ProbeMonitor` saw: one delay per usable 2 s window, dropouts, steps."""

    seconds: float = 0.0
    delays: list[float] = field(default_factory=list)  # ms, per window with a clear correlation peak
    times: list[float] = field(default_factory=list)  # s since the monitor started, per delay
    dropouts: int = 0  # runs of exact-zero blocks right after signal
    dropout_blocks: int = 0
    steps: int = 0  # delay changes >= STEP_SAMPLES between consecutive windows
    windows: int = 0

    def summary(self) -> dict:
        d = np.array(self.delays) if self.delays else np.array([np.nan])
        return {"seconds": round(self.seconds, 1), "windows": self.windows, "delay_windows": len(self.delays),
                "delay_ms_median": float(np.median(d)), "delay_ms_min": float(np.min(d)),
                "delay_ms_max": float(np.max(d)), "delay_steps": self.steps, "dropouts": self.dropouts,
                "dropout_blocks": self.dropout_blocks}


class ProbeMonitor:
    """``arecord`` of ``probe_mic_loop`` (mic bus, loopback) analysed as it arrives, in a thread."""

    def __init__(self, rig: Rig) -> None:
        self.fig = ProbeFigures()
        self._lock = threading.Lock()
        self._last_delay: Optional[int] = None
        self._prev_peak = 0.0  # peak of the loopback block before the current one
        self._in_zero = False
        self.p = subprocess.Popen(["arecord", "-q", "-D", "probe_mic_loop", "-f", "FLOAT_LE", "-r", str(RATE), "-c",
                                   "2", "-t", "raw", "-"], env=rig.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.p.stdout is not None
        need = (WINDOW + MAX_LAG) * 8
        buf = b""
        consumed = 0  # samples analysed so far
        while True:
            data = self.p.stdout.read(WINDOW * 8)
            if not data:
                break
            buf += data
            while len(buf) >= need:
                x = np.frombuffer(buf[:need], "<f4").reshape(-1, 2)
                self._window(x, consumed)
                buf = buf[WINDOW * 8:]
                consumed += WINDOW

    def _window(self, x: np.ndarray, start: int) -> None:
        mic, out = x[:WINDOW, 0].astype(np.float64), x[:, 1].astype(np.float64)
        blocks = out[:WINDOW].reshape(-1, SHIFT)
        peaks = np.abs(blocks).max(axis=1)
        with self._lock:
            self.fig.windows += 1
            self.fig.seconds = (start + WINDOW) / RATE
            for pk in peaks:
                if pk == 0.0:
                    if not self._in_zero and self._prev_peak > SIGNAL:
                        self._in_zero = True
                        self.fig.dropouts += 1
                    if self._in_zero:
                        self.fig.dropout_blocks += 1
                else:
                    self._in_zero = False
                self._prev_peak = pk
            d, peak = _delay(out, mic)
            if peak < MIN_PEAK:
                return
            if self._last_delay is not None and abs(d - self._last_delay) >= STEP_SAMPLES:
                self.fig.steps += 1
            self._last_delay = d
            self.fig.delays.append(1000 * d / RATE)
            self.fig.times.append(start / RATE)

    def snapshot(self) -> ProbeFigures:
        with self._lock:
            return ProbeFigures(self.fig.seconds, list(self.fig.delays), list(self.fig.times), self.fig.dropouts,
                                self.fig.dropout_blocks, self.fig.steps, self.fig.windows)

    def stop(self) -> ProbeFigures:
        if self.p.poll() is None:
            self.p.terminate()
        self.p.wait(10)
        self._thread.join(10)
        return self.snapshot()


def _delay(out: np.ndarray, mic: np.ndarray) -> tuple[int, float]:
    """(lag in samples, normalised correlation at it) of ``out[n + lag] ~ mic[n]``."""
    e_mic = float(np.dot(mic, mic))
    if e_mic == 0.0:
        return 0, 0.0
    n = 1 << (len(out) + len(mic) - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(out, n) * np.conj(np.fft.rfft(mic, n)), n)[: MAX_LAG + 1]
    k = int(np.argmax(c))
    seg = out[k:k + len(mic)]
    e_out = float(np.dot(seg, seg))
    return k, float(c[k] / np.sqrt(e_mic * e_out)) if e_out > 0 else 0.0


# -- the programs ---------------------------------------------------------------------------

# Counters in dtlnd's `--measure` lines and summary, in the formats of both the line ("| misses 3 |") and the
# summary ("deadline misses 3"), old and new; a name missing from the output is left out.
COUNTERS = {
    "xruns_in": r"xruns in (\d+)",
    "xruns_out": r"xruns in \d+ out (\d+)",
    "input_overflow": r"input overflow (\d+)",
    "output_underflow": r"output underflow (\d+)",
    "misses": r"\bmisses (\d+)",
    "gaps": r"\bgaps (\d+)|(\d+) gaps\b",
    "lost_ms": r"gaps \d+ \((\d+(?:\.\d+)?) ms\)|gaps, (\d+(?:\.\d+)?) ms",
    "resets": r"\bresets (\d+)|state resets (\d+)",
    "callback_errors": r"callback errors (\d+)|\| errors (\d+)",
    "late": r"\| late (\d+)|(\d+) blocks over it",
    "recentred": r"re-?centred (\d+)",
    "nonfinite": r"non-finite (?:input samples )?(\d+)",
    "audio_lost": r"audio (?:stream )?lost (\d+)|\| lost (\d+)",
}
# The counters that are glitches: audio that went missing or wrong.
GLITCH_KEYS = ("input_overflow", "output_underflow", "misses", "gaps", "audio_lost", "callback_errors")
LATENCY = re.compile(r"latency:? ([\d.]+) ms")
MEASURE_LINE = re.compile(r"^\[\s*([\d.]+) s\]")


def parse_counters(text: str) -> dict[str, float]:
    """The counters found in one line (or the summary) of dtlnd's ``--measure`` output."""
    out: dict[str, float] = {}
    for name, rx in COUNTERS.items():
        m = re.search(rx, text)
        if m:
            out[name] = float(next(g for g in m.groups() if g is not None))
    m = LATENCY.search(text)
    if m:
        out["latency_ms"] = float(m.group(1))
    return out


def dtlnd_summary(stdout: str) -> dict:
    """Counters and result of the ``summary:`` block of ``dtlnd run --measure``."""
    _, _, tail = stdout.partition("summary:")
    fig: dict = parse_counters(tail) if tail else {}
    m = re.search(r"result: (.*)", tail)
    fig["result"] = m.group(1) if m else None
    return fig


def dtlnd_cmd(mode: str, model: Optional[str], models: Path, extra: list[str],
              duration: Optional[float]) -> list[str]:
    """``dtlnd run --measure`` on the rig's PCMs, with this checkout's package."""
    cmd = [sys.executable, "-m", "dtlnd", "run", "--measure", "--mode", mode, "--model-dir", str(models),
           "--input", "rig_mic_in" if mode == "ns" else "rig_aec_in", "--output", "rig_loop_play"]
    if model:
        cmd += ["--model", model]
    if duration:
        cmd += ["--duration", f"{duration:g}"]
    return cmd + extra


def dtlnd_env(rig: Rig) -> dict[str, str]:
    return rig.with_env(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def start_rig(shared: Path, label: str, root: Optional[Path] = None, **env: str) -> Rig:
    """A fresh rig (its own jackd) in ``root`` (a new temp dir by default); the caller stops it."""
    root = root or Path(tempfile.mkdtemp(prefix=f"dtlnd-{label}-"))
    root.mkdir(parents=True, exist_ok=True)
    rig = Rig(shared / "alsa-rig", root, label)
    rig._script_env.update(env)
    rig.start()
    return rig


def sigint_for_children() -> None:
    """Give SIGINT its default action again, so the programs started here get it too.

    A shell starts background jobs with SIGINT ignored, exec keeps it ignored,
    and a Python program then never sees Ctrl-C: the peer could not be stopped.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def stop(proc: Proc, timeout: float = 20.0) -> Optional[int]:
    """SIGINT, then after ``timeout`` s SIGKILL to the process and every descendant; its exit status or None."""
    pids = tree(proc.pid)
    proc.signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        proc.kill()
        return None


def wait_started(proc: Proc, pattern: str, stream: str, timeout: float = 60.0) -> None:
    """Wait for ``pattern`` on the program's output; exit with its stderr when it dies first."""
    try:
        proc.wait_for(pattern, timeout, stream=stream)
    except AssertionError as e:
        proc.kill()
        sys.exit(f"{' '.join(proc.args[:4])} did not start: {str(e)[:2000]}")


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])

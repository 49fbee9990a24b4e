"""Live status: the daemon's state file, and ``dtlnd status`` that reads it.

The running daemon rewrites ``status.json`` in its runtime directory once a
second (through `dtlnd.atomic`, without fsync: a reader never sees half a
file, and a runtime directory does not outlive a reboot) and removes it when
it stops.  The directory is ``$DTLND_RUNTIME_DIR``
when set; else systemd's ``$RUNTIME_DIRECTORY`` (``RuntimeDirectory=dtlnd``
of the units: ``/run/dtlnd`` for the system unit); else
``$XDG_RUNTIME_DIR/dtlnd`` for a user; else ``/run/dtlnd``.

``dtlnd status`` exits 0 while a daemon is running; 1 when the file is
stale (its process is gone, or it has not been updated for `STALE_AFTER`
seconds: the daemon is stuck); 3 when there is no state file (not running,
as LSB's ``status`` action).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_write

FILE_NAME = "status.json"
STALE_AFTER = 5.0  # seconds without an update before a live PID counts as stuck
NOT_RUNNING = 3
STALE = 1
SHM_PREFIX = b"/dev/shm/jack"  # JACK's shared segments: the server's memory, mapped in every client


def runtime_dirs() -> list[Path]:
    """Where the state file may be, in the order the daemon picks them (first is where it writes)."""
    env = os.environ.get("DTLND_RUNTIME_DIR")
    if env:
        return [Path(env)]
    out = []
    for name in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        value = os.environ.get(name)
        if value:
            # systemd may pass several, colon-separated; XDG's is the user's base folder.
            out.append(Path(value.split(":")[0]) if name == "RUNTIME_DIRECTORY" else Path(value) / "dtlnd")
    out.append(Path("/run/dtlnd"))
    return out


# -- the daemon's side ---------------------------------------------------------


class ProcessUsage:
    """This process's CPU share since the last call, and RSS without JACK's shared segments."""

    SHM_EVERY = 60.0  # seconds: reading smaps costs ~6 ms of kernel time here (a JACK client maps a lot)

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu())
        self._shm: tuple[float, int] = (-self.SHM_EVERY, 0)
        self._page_kib = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4

    def rss_cached(self) -> Optional[int]:
        """`rss_kib` for the daemon's once-a-second report, at a fraction of its cost.

        The resident total comes from ``/proc/self/statm`` (one short line)
        every time; the JACK segments' share from `rss_kib` every
        `SHM_EVERY` seconds: once the server's buffers are mapped it hardly
        moves.
        """
        now = time.monotonic()
        try:
            total = int(_read("/proc/self/statm").split()[1]) * self._page_kib
        except (OSError, IndexError, ValueError):
            return None
        if now - self._shm[0] >= self.SHM_EVERY:
            ours = self.rss_kib()
            if ours is None:
                return None
            self._shm = (now, max(0, total - ours))
        return total - self._shm[1]

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def cpu_percent(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        (then, before), self._last = self._last, (now, cpu)
        return 100.0 * (cpu - before) / (now - then) if now > then else 0.0

    @staticmethod
    def rss_kib() -> Optional[int]:
        """Resident KiB from /proc/self/smaps, minus the /dev/shm/jack* mappings (None off Linux).

        Those are JACK's server buffers shared by every client: counting them
        would charge the daemon for memory the server owns.  The file is read
        in one call (the kernel's work, GIL released) and searched with
        ``bytes.find``, so the audio callbacks are not held up by a parse.
        """
        try:
            rollup = _read("/proc/self/smaps_rollup")
            smaps = _read("/proc/self/smaps") if SHM_PREFIX in _read("/proc/self/maps") else b""
        except OSError:
            return None
        total = _field_kib(rollup, 0)
        if total is None:
            return None
        at = smaps.find(SHM_PREFIX)
        while at >= 0:
            total -= _field_kib(smaps, at) or 0
            at = smaps.find(SHM_PREFIX, at + 1)
        return total


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _field_kib(text: bytes, start: int, field: bytes = b"\nRss:") -> Optional[int]:
    at = text.find(field, start)
    if at < 0:
        return None
    end = text.find(b"kB", at)
    return int(text[at + len(field):end])


class StateFile:
    """The daemon's writer: ``write(figures)`` once a second, ``remove()`` at a clean stop."""

    def __init__(self, folder: Optional[Path] = None) -> None:
        self.folder = folder or runtime_dirs()[0]
        self.path = self.folder / FILE_NAME
        self.usable = True

    def write(self, state: dict[str, Any]) -> Optional[str]:
        """Replace the file atomically; on failure return why (and stop trying), else None."""
        if not self.usable:
            return None
        try:
            self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
            # 0644: readable by `dtlnd status` as any user, whatever the umask.
            with atomic_write(self.path, mode=0o644, durable=False) as f:
                f.write(json.dumps(state, separators=(",", ":")).encode())
        except OSError as exc:
            self.usable = False
            return f"no live status: cannot write {self.path}: {exc.strerror or exc}"
        return None

    def remove(self) -> None:
        try:
            if self.usable:
                self.path.unlink()
        except OSError:
            pass


# -- `dtlnd status` ----------------------------------------------------------------


def find() -> Optional[Path]:
    for folder in runtime_dirs():
        path = folder / FILE_NAME
        if path.exists():
            return path
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the system unit's dtlnd): it exists
        return True
    return True


def read(path: Path) -> tuple[dict[str, Any], Optional[str]]:
    """The state and, when it is stale, why."""
    state = json.loads(path.read_text())
    age = time.time() - float(state.get("updated", 0))
    pid = int(state.get("pid", 0))
    if pid <= 0 or not _alive(pid):
        return state, f"stale: its daemon (pid {pid}) is gone; last update {age:.0f} s ago"
    if age > STALE_AFTER:
        return state, f"stale: pid {pid} has not updated it for {age:.0f} s (stuck?)"
    return state, None


def _slewed(st: dict[str, Any]) -> str:
    n = st.get("slewed_steps", 0)
    return f", steps slewed back {n}" if n else ""


def _uptime(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def render(st: dict[str, Any]) -> str:
    """The human-readable form of a state."""
    e, x, lat = st.get("engine", {}), st.get("xruns", {}), st.get("latency_ms")
    rss = st.get("rss_kib")
    lines = [
        f"dtlnd {st.get('state', '?')} (pid {st.get('pid')}, up {_uptime(st.get('uptime_s', 0))}): "
        f"{st.get('mode')} {st.get('model')} on {st.get('runtime')}",
        f"devices: {st.get('devices') or 'none open'}",
        f"blocks {st.get('blocks', 0)}; engine mean {e.get('mean_ms', 0):.3f} ms, p99 {e.get('p99_ms', 0):.3f} ms, "
        f"max {e.get('max_ms', 0):.3f} ms ({100 * e.get('budget_share', 0):.1f}% of 8 ms)",
        f"xruns in {x.get('input', 0)} out {x.get('output', 0)}; misses {st.get('misses', 0)}; "
        f"re-centred {st.get('resyncs', 0)}{_slewed(st)}; "
        f"gaps {st.get('gaps', 0)} ({st.get('lost_ms', 0):.0f} ms lost); late {st.get('late', 0)}",
        f"callback errors {st.get('callback_errors', 0)}; non-finite input {st.get('nonfinite', 0)}; "
        f"state resets {st.get('resets', 0)}; audio lost {st.get('streams_lost', 0)} times",
        "latency: " + (f"{lat['total']:.1f} ms = {lat['algorithmic']:.1f} algorithmic + {lat['input']:.1f} input + "
                       f"{lat['buffer']:.1f} buffer + {lat['output']:.1f} output" if lat else "no stream open"),
    ]
    for name, value in (st.get("extra") or {}).items():  # e.g. the reference alignment, in its own words
        lines.append(f"{name}: {value.get('describe', value) if isinstance(value, dict) else value}")
    lines.append(f"process: CPU {st.get('cpu_percent', 0):.1f}%, RSS "
                 + (f"{rss / 1024:.1f} MiB" if rss is not None else "unknown") + " (without JACK's shared memory)")
    return "\n".join(lines)


def command(as_json: bool, watch: bool, interval: float = 1.0) -> int:
    """``dtlnd status``: print the live status (once, or every ``interval`` s with ``watch``)."""
    while True:
        path = find()
        if path is None:
            where = ", ".join(str(d) for d in runtime_dirs())
            print(f"dtlnd: not running (no {FILE_NAME} in {where})", file=sys.stderr)
            return NOT_RUNNING
        try:
            state, stale = read(path)
        except (OSError, ValueError) as exc:
            print(f"dtlnd: cannot read {path}: {exc}", file=sys.stderr)
            return STALE
        if stale is not None:
            print(f"dtlnd: {path} is {stale}", file=sys.stderr)
            return STALE
        if as_json:
            print(json.dumps(state), flush=True)
        else:
            print(("\033[H\033[J" if watch and sys.stdout.isatty() else "") + render(state), flush=True)
        if not watch:
            return 0
        time.sleep(interval)

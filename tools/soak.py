"""Soak: the daemon on the rig for a long time, watching memory, CPU and glitches (issue 9, item 10).

Usage, from the repository root:

    python tools/soak.py [--minutes 60] [--modes ns,aec] [--every 10] [--json FILE]
                         [--dtlnd-args "--buffer-blocks 1"] [--shared DIR]

Each mode gets its own rig (jackd), speech from shared/audio looped into its
microphone (and reference) bus, ``dtlnd run --measure`` of this checkout,
and a probe recording of microphone and loopback; the modes run at the same
time.  Every ``--every`` seconds it samples, per mode: RSS and PSS without
JACK's shared memory, CPU seconds per audio second over the interval, the
daemon's own counters from its last ``--measure`` line, and the probe's
delay, dropouts and delay steps (see tools/rigtools.py for the definitions).

At the end it prints, per mode: the RSS slope in MB per hour (least
squares over the samples after the first minute), CPU median, delay range,
and the glitch count: xruns + deadline misses + gaps + lost audio from the
daemon's summary, plus the probe's dropouts and delay steps; and beside it
the cycles the rig's jackd lost itself (clock slips, late clients: see
tests/rig.py), which the daemon rightly counts too.  It is not a CI test.
Exit status: 0 if every mode met the goals (slope within ±1 MB/h, no
glitch), 1 if not, 2 on bad arguments, 70 if something would not start.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import rigtools as rt

WARMUP_S = 60.0  # RSS samples before this are start-up, not a trend


class ModeRun:
    """One mode's rig, source, daemon and probe."""

    def __init__(self, mode: str, shared: Path, extra: list[str]) -> None:
        self.mode = mode
        self.rig = rt.start_rig(shared, f"soak{mode}")
        self.player = rt.LoopPlayer(self.rig, rt.source_signal(shared))
        cmd = rt.dtlnd_cmd(mode, None, shared / "models", extra, None)
        self.proc = rt.Proc(cmd, rt.dtlnd_env(self.rig))
        try:
            rt.wait_started(self.proc, r"^\[\s*[\d.]+ s\]", "out")
        except SystemExit:
            self.player.stop()
            self.rig.stop()
            raise
        self.probe = rt.ProbeMonitor(self.rig)
        self.samples: list[dict] = []
        self.t0 = time.monotonic()
        self._last = (self.t0, rt.cpu_seconds(rt.tree(self.proc.pid)))

    def sample(self) -> dict:
        now = time.monotonic()
        cpu = rt.cpu_seconds(rt.tree(self.proc.pid))
        rss, pss = rt.memory_mb(rt.tree(self.proc.pid))
        lines = self.proc.lines(r"^\[\s*[\d.]+ s\]", stream="out")
        counters = rt.parse_counters(lines[-1][1]) if lines else {}
        probe = self.probe.snapshot().summary()
        t_last, cpu_last = self._last
        self._last = (now, cpu)
        s = {"t": round(now - self.t0, 1), "rss_mb": round(rss, 2), "pss_mb": round(pss, 2),
             "cpu_s_per_s": round((cpu - cpu_last) / (now - t_last), 4), "daemon": counters, "probe": probe,
             "alive": self.proc.p.poll() is None}
        self.samples.append(s)
        return s

    def finish(self) -> dict:
        if self.proc.p.poll() is None:
            self.proc.signal(signal.SIGINT)
        try:
            rc: Optional[int] = self.proc.wait(30)
        except Exception:
            self.proc.kill()
            rc = None
        probe = self.probe.stop()
        self.player.stop()
        jackd = {"clock_slips": self.rig.clock_slips(), "late_client_lines": len(self.rig.late_clients())}
        self.rig.stop()
        return self.report(rc, probe, jackd)

    def report(self, rc: Optional[int], probe: rt.ProbeFigures, jackd: dict) -> dict:
        """The figures for one mode; ``jackd``: the cycles the rig's jackd itself lost (its log)."""
        summary = rt.dtlnd_summary(self.proc.stdout)
        if len(summary) <= 1 and self.samples:  # no summary: the last --measure line's counters
            summary.update(self.samples[-1]["daemon"])
        late = [s for s in self.samples if s["t"] >= WARMUP_S] or self.samples
        t_h = np.array([s["t"] for s in late]) / 3600
        rss = np.array([s["rss_mb"] for s in late])
        slope = float(np.polyfit(t_h, rss, 1)[0]) if len(late) >= 3 else float("nan")
        cpu = [s["cpu_s_per_s"] for s in self.samples[1:]] or [float("nan")]
        pf = probe.summary()
        daemon_glitches = int(sum(summary.get(k, 0) for k in rt.GLITCH_KEYS))
        glitches = daemon_glitches + pf["dropouts"] + pf["delay_steps"]
        return {"mode": self.mode, "exit": rc, "minutes": round((time.monotonic() - self.t0) / 60, 1),
                "rss_slope_mb_per_h": round(slope, 3), "rss_mb_first": float(rss[0]) if len(rss) else None,
                "rss_mb_last": float(rss[-1]) if len(rss) else None, "cpu_s_per_s_median": float(np.median(cpu)),
                "glitches": glitches, "daemon_glitches": daemon_glitches, "daemon_summary": summary, "probe": pf,
                "jackd": jackd,
                "samples": self.samples, "stderr_tail": self.proc.stderr.splitlines()[-5:]}


def print_sample(mode: str, s: dict) -> None:
    d, p = s["daemon"], s["probe"]
    xr = int(d.get("xruns_in", 0) + d.get("xruns_out", 0))
    gaps = f"{int(d['gaps'])}" if "gaps" in d else "n/a"  # today's --measure lines may not carry it
    print(f"{mode:4} t={s['t']:7.1f}s rss {s['rss_mb']:6.2f} MB pss {s['pss_mb']:6.2f} cpu {s['cpu_s_per_s']:.3f} "
          f"| daemon xruns {xr} misses {int(d.get('misses', 0))} gaps {gaps} "
          f"latency {d.get('latency_ms', float('nan')):.1f} ms | probe delay {p['delay_ms_median']:.1f} ms "
          f"({p['delay_ms_min']:.1f}-{p['delay_ms_max']:.1f}) dropouts {p['dropouts']} steps {p['delay_steps']}",
          flush=True)


def print_report(r: dict) -> None:
    p = r["probe"]
    ok = abs(r["rss_slope_mb_per_h"]) <= 1.0 and r["glitches"] == 0
    print(f"\n== {r['mode']}: {r['minutes']} min, daemon exit {r['exit']} ({'goals met' if ok else 'GOALS NOT MET'})")
    print(f"  RSS without JACK shm: {r['rss_mb_first']:.2f} -> {r['rss_mb_last']:.2f} MB, "
          f"slope {r['rss_slope_mb_per_h']:+.3f} MB/hour (least squares after {WARMUP_S:.0f} s; goal within 1)")
    print(f"  CPU: median {r['cpu_s_per_s_median']:.3f} s per audio s")
    print(f"  glitches: {r['glitches']} = daemon {r['daemon_glitches']} (summary: "
          + ", ".join(f"{k} {int(v)}" for k, v in r["daemon_summary"].items() if k in rt.COUNTERS)
          + f") + probe dropouts {p['dropouts']} ({p['dropout_blocks']} blocks) + delay steps {p['delay_steps']}")
    j = r["jackd"]
    print(f"  the rig's own losses (jackd's log): {j['clock_slips']} clock slips, {j['late_client_lines']} "
          "late-client lines (each damages the daemon's audio and the probe's alike)")
    print(f"  delay mic -> loopback: median {p['delay_ms_median']:.1f} ms, range {p['delay_ms_min']:.1f}-"
          f"{p['delay_ms_max']:.1f} ms over {p['delay_windows']} of {p['windows']} windows; daemon says "
          f"{r['daemon_summary'].get('latency_ms', float('nan')):.1f} ms, result {r['daemon_summary'].get('result')}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="how long (default 60)")
    ap.add_argument("--modes", default="ns,aec", help="comma-separated dtlnd modes, run at once (default ns,aec)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--dtlnd-args", default="", help="extra arguments for every `dtlnd run`, one string")
    ap.add_argument("--shared", help="the shared folder (models/, audio/, alsa-rig/)")
    ap.add_argument("--json", metavar="FILE", help="write every sample and the reports as JSON")
    a = ap.parse_args(argv)
    rt.sigint_for_children()
    modes = [m for m in a.modes.split(",") if m]
    if not modes or a.minutes <= 0 or a.every <= 0:
        ap.error("--modes needs at least one mode; --minutes and --every must be > 0")
    shared = rt.shared_dir(a.shared)
    print(f"soak: {', '.join(modes)} for {a.minutes:g} min, load average {rt.loadavg()}", flush=True)
    runs: list[ModeRun] = []
    try:
        for m in modes:
            runs.append(ModeRun(m, shared, shlex.split(a.dtlnd_args)))
        end = time.monotonic() + 60 * a.minutes
        while time.monotonic() < end:
            time.sleep(min(a.every, max(0.0, end - time.monotonic())))
            for r in runs:
                print_sample(r.mode, r.sample())
    except KeyboardInterrupt:
        print("interrupted: reporting what was sampled", flush=True)
    except SystemExit:
        for r in runs:
            r.finish()
        return 70
    reports = [r.finish() for r in runs]
    print(f"\nload average at the end {rt.loadavg()}")
    for rep in reports:
        print_report(rep)
    if a.json:
        Path(a.json).write_text(json.dumps({"modes": reports}, indent=1))
    ok = all(abs(r["rss_slope_mb_per_h"]) <= 1.0 and r["glitches"] == 0 for r in reports)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

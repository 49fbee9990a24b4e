"""Two real, independent audio clocks on one machine, for the daemon's drift handling (issue 9, item 11).

Usage, from the repository root (needs gcc; installs nothing):

    python tools/two_clocks.py [--ppm 100,-100] [--minutes 10] [--mode ns]
                               [--dtlnd-args "..."] [--json FILE] [--shared DIR]

Each ``--ppm`` value gets its own pair of jackd servers, all run at once:

* server A is the usual rig (jackd dummy backend, 16 kHz, 128-frame periods,
  real time); the daemon captures the microphone (and reference) there;
* server B is a second rig whose jackd runs with ``fakeclock.so``
  (tools/fakeclock.c) preloaded, so its CLOCK_MONOTONIC, which paces the
  dummy backend's cycles, runs PPM parts per million fast (negative: slow).
  The daemon writes its loopback output there.  (jackd's ``-w`` cannot do
  this: the dummy backend turns it into a period size and keeps time from
  the rate, ``-r``, which must stay 16000 for the daemon.)

One process can reach only one JACK server through libjack (jack2 keeps the
server's engine state in process-wide globals), so the daemon reaches B
through a second copy of libjack, ``libjacq.so.0``: the system's library
byte-edited to take its server from ``$JACQ_DEFAULT_SERVER``, loaded by a
copy of the ALSA jack plugin (PCM type ``jacq``) that needs it instead of
``libjack.so.0``.  All of it lives in a temp dir; the daemon runs unchanged.

Measured per setting, over ``--minutes``: the daemon's own ``--measure``
figures (latency, xruns, deadline misses, gaps, re-centring) and two
recordings, the microphone bus on A and the loopback on B.  How fast each
recording grows against real time gives each clock's real rate, and so the
real drift between them: the set PPM plus the cycles either jackd lost
under load (its XRun lines).  With the delay held constant, the lag between
the recordings grows by exactly drift x elapsed samples; what is left after
removing that is the change of the end-to-end delay.  The delay is "bounded" when that residual and the
daemon's latency figure each stay within a 16 ms range (after 10 s).
Dropouts and delay steps are counted as in tools/rigtools.py; jackd's own
XRun lines (a late cycle on the loaded machine) are counted for both
servers, since they disturb the clocks themselves.

Exit status: 0 if every setting kept the delay bounded with no xruns,
misses or gaps; 1 if not; 2 bad arguments; 70 setup failed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import rigtools as rt

BOUND_MS = 16.0  # two blocks
SETTLE_S = 10.0
TRACK = 2000  # samples either side of the predicted lag searched per window
HOP = rt.WINDOW  # one delay estimate per 2 s of microphone audio


def build(work: Path) -> Path:
    """fakeclock.so, libjacq.so.0 and libasound_module_pcm_jacq.so in ``work``; the ALSA pcm_type block."""
    src = Path(__file__).with_name("fakeclock.c")
    r = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(work / "fakeclock.so"), str(src), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"two_clocks: gcc failed on {src}: {r.stderr.strip()}")
    libjack = sorted(glob.glob("/usr/lib/*/libjack.so.0")) + sorted(glob.glob("/usr/lib/libjack.so.0"))
    plugin = sorted(glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_jack.so"))
    if not libjack or not plugin:
        sys.exit("two_clocks: libjack.so.0 or the ALSA jack plugin not found (apt: libjack-jackd2-0 "
                 "libasound2-plugins)")
    lib = Path(libjack[0]).resolve().read_bytes()
    if lib.count(b"JACK_DEFAULT_SERVER\0") != 1 or lib.count(b"libjack.so.0\0") != 1:
        sys.exit(f"two_clocks: {libjack[0]} is not the jack2 library this tool knows how to copy")
    (work / "libjacq.so.0").write_bytes(lib.replace(b"libjack.so.0\0", b"libjacq.so.0\0")
                                        .replace(b"JACK_DEFAULT_SERVER\0", b"JACQ_DEFAULT_SERVER\0"))
    plug = Path(plugin[0]).read_bytes()
    (work / "libasound_module_pcm_jacq.so").write_bytes(plug.replace(b"libjack.so.0\0", b"libjacq.so.0\0"))
    return work


class Pair:
    """Server A (microphone), server B (loopback, clock off by ``ppm``), the daemon between them."""

    def __init__(self, ppm: float, work: Path, shared: Path, mode: str, extra: list[str]) -> None:
        self.ppm = ppm
        self.dir = Path(tempfile.mkdtemp(prefix=f"clk{ppm:+g}-", dir=work))
        self.a = rt.start_rig(shared, "clkA", self.dir / "a")
        self.b = rt.start_rig(shared, "clkB", self.dir / "b", LD_PRELOAD=str(work / "fakeclock.so"),
                              FAKECLOCK_PPM=f"{ppm:g}")
        conf = self.dir / "asoundrc.two"
        conf.write_text(f"<{self.a.alsa_conf}>\n"
                        f'pcm_type.jacq {{ lib "{work / "libasound_module_pcm_jacq.so"}" open "_snd_pcm_jack_open" }}\n'
                        'pcm.clkb_loop_play { type jacq name "clkb_loop_play" align_psize false '
                        'playback_ports { 0 "aloop:input" } }\n')
        env = rt.dtlnd_env(self.a)
        env.update(ALSA_CONFIG_PATH=str(conf), LD_LIBRARY_PATH=str(work), JACQ_DEFAULT_SERVER=self.b.server)
        self.player = rt.LoopPlayer(self.a, rt.source_signal(shared))
        cmd = rt.dtlnd_cmd(mode, None, shared / "models", [*extra, "--output", "clkb_loop_play"], None)
        self.proc = rt.Proc(cmd, env)
        try:
            rt.wait_started(self.proc, r"^\[\s*[\d.]+ s\]", "out")
        except SystemExit:
            self.stop_rigs()
            raise
        self.mic_path, self.out_path = self.dir / "mic_a.raw", self.dir / "out_b.raw"
        self.recs = [self._record(self.a, "rig_mic_in", self.mic_path), self._record(self.b, "rig_loop_rec",
                                                                                      self.out_path)]
        self.t0 = time.monotonic()
        self.sizes: list[tuple[float, int, int]] = []  # (monotonic s, mic bytes, out bytes)
        self._done = threading.Event()
        self._sizer = threading.Thread(target=self._sample_sizes, daemon=True)
        self._sizer.start()

    def _sample_sizes(self) -> None:
        """How fast each recording grows against real time: each clock's real rate, slips included."""
        while not self._done.wait(0.5):
            with contextlib.suppress(OSError):
                self.sizes.append((time.monotonic(), self.mic_path.stat().st_size, self.out_path.stat().st_size))

    def rates(self) -> tuple[float, float]:
        """Real samples per second of server A and server B, least squares after `SETTLE_S`."""
        a = np.array([s for s in self.sizes if s[0] - self.t0 >= SETTLE_S], np.float64)
        if len(a) < 10:
            return float("nan"), float("nan")
        t = a[:, 0] - a[0, 0]
        return float(np.polyfit(t, a[:, 1] / 4, 1)[0]), float(np.polyfit(t, a[:, 2] / 4, 1)[0])

    @staticmethod
    def _record(rig: rt.Rig, pcm: str, path: Path) -> subprocess.Popen:
        return subprocess.Popen(["arecord", "-q", "-D", pcm, "-f", "FLOAT_LE", "-r", str(rt.RATE), "-c", "1", "-t",
                                 "raw", "--period-time=16000", "--buffer-time=512000", str(path)],
                                env=rig.env, stdout=subprocess.DEVNULL, stderr=path.with_suffix(".err").open("w"))

    def stop_rigs(self) -> None:
        self.player.stop()
        for rig in (self.a, self.b):
            rig.stop()

    def finish(self) -> dict:
        minutes = (time.monotonic() - self.t0) / 60
        self._done.set()
        self._sizer.join(5)
        rate_a, rate_b = self.rates()
        true_ppm = (rate_b / rate_a - 1) * 1e6
        for r in self.recs:
            r.send_signal(signal.SIGINT)
        for r in self.recs:
            try:
                r.wait(10)
            except subprocess.TimeoutExpired:
                r.kill()
        self.proc.signal(signal.SIGINT)
        try:
            rc: Optional[int] = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = None
        jack_xruns = [sum("XRun" in line for line in (rig.run_dir / "jackd.log").read_text().splitlines())
                      for rig in (self.a, self.b)]
        self.stop_rigs()
        rep = {"ppm": self.ppm, "minutes": round(minutes, 1), "exit": rc, "jackd_xruns_a_b": jack_xruns,
               "rate_a_hz": rate_a, "rate_b_hz": rate_b, "real_drift_ppm": true_ppm}
        rep.update(daemon_figures(self.proc.stdout))
        drift = true_ppm if np.isfinite(true_ppm) else self.ppm
        rep.update(analyse(np.fromfile(self.mic_path, "<f4"), np.fromfile(self.out_path, "<f4"), drift))
        rep["recorder_overruns_a_b"] = [p.with_suffix(".err").read_text().count("overrun")
                                        for p in (self.mic_path, self.out_path)]
        for p in (self.mic_path, self.out_path):
            p.unlink()
        g = rep["daemon_summary"]
        rep["glitches"] = int(sum(g.get(k, 0) for k in rt.GLITCH_KEYS))
        rep["bounded"] = bool(rep["residual_range_ms"] <= BOUND_MS and rep["daemon_latency_range_ms"] <= BOUND_MS)
        return rep


def daemon_figures(stdout: str) -> dict:
    """The latency range the daemon reported after `SETTLE_S`, and its summary's counters."""
    lat = []
    for line in stdout.splitlines():
        m = rt.MEASURE_LINE.match(line)
        if m and float(m.group(1)) >= SETTLE_S:
            c = rt.parse_counters(line)
            if "latency_ms" in c:
                lat.append(c["latency_ms"])
    arr = np.array(lat) if lat else np.array([np.nan])
    return {"daemon_latency_ms_min": float(arr.min()), "daemon_latency_ms_max": float(arr.max()),
            "daemon_latency_range_ms": float(arr.max() - arr.min()), "daemon_summary": rt.dtlnd_summary(stdout)}


def _corr(y: np.ndarray, x: np.ndarray) -> tuple[int, float]:
    """(k, normalised peak) maximising sum y[n + k] x[n] for 0 <= k <= len(y) - len(x)."""
    n = 1 << (len(y) + len(x) - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)[: len(y) - len(x) + 1]
    k = int(np.argmax(c))
    seg = y[k:k + len(x)]
    den = float(np.sqrt(np.dot(x, x) * np.dot(seg, seg)))
    return k, float(c[k] / den) if den > 0 else 0.0


def analyse(mic: np.ndarray, out: np.ndarray, ppm: float) -> dict:
    """Residual delay (lag less ppm x elapsed samples) per 2 s window, its range and trend; dropouts; steps."""
    mic, out = mic.astype(np.float64), out.astype(np.float64)
    drift = ppm * 1e-6
    lags, starts, lag = [], [], None
    for n0 in range(int(SETTLE_S * rt.RATE), len(mic) - rt.WINDOW, HOP):
        x = mic[n0:n0 + rt.WINDOW]
        if lag is None:  # the first estimate: anything within +-1 s
            lo = max(0, n0 - rt.RATE)
            k, peak = _corr(out[lo:n0 + rt.WINDOW + rt.RATE], x)
            cand = lo + k - n0
        else:
            pred = lag + round(drift * (n0 - starts[-1]))
            lo = n0 + pred - TRACK
            if lo < 0 or lo + rt.WINDOW + 2 * TRACK > len(out):
                continue
            k, peak = _corr(out[lo:lo + rt.WINDOW + 2 * TRACK], x)
            cand = lo + k - n0
        if peak >= rt.MIN_PEAK:
            lag = cand
            lags.append(cand)
            starts.append(n0)
    if len(lags) < 3:
        return {"windows": len(lags), "residual_range_ms": float("nan"), "note": "too few windows correlated"}
    n = np.array(starts, np.float64)
    lag_arr = np.array(lags, np.float64)
    resid = (lag_arr - drift * n) / rt.RATE * 1000  # ms, plus the recorders' unknown start offset
    fit = np.polyfit(n, lag_arr, 1)
    # Within one 2 s window the lag itself moves by drift x 2 s, so the estimate wobbles by up to that.
    step = rt.STEP_SAMPLES + 2 * abs(drift) * rt.WINDOW
    steps = int(np.sum(np.abs(np.diff(resid)) >= 1000 * step / rt.RATE))
    peaks = np.abs(out[: len(out) // rt.SHIFT * rt.SHIFT].reshape(-1, rt.SHIFT)).max(axis=1)
    dropouts = int(np.sum((peaks[1:] == 0) & (peaks[:-1] > rt.SIGNAL)))
    return {"windows": len(lags), "residual_range_ms": float(np.ptp(resid)),
            "residual_trend_ms_per_min": float(np.polyfit(n / rt.RATE / 60, resid, 1)[0]),
            "measured_drift_ppm": float(fit[0] * 1e6), "delay_steps": steps, "dropouts": dropouts,
            "mic_seconds": round(len(mic) / rt.RATE, 1), "out_seconds": round(len(out) / rt.RATE, 1),
            "residual_t_s": [round(v / rt.RATE, 1) for v in starts], "residual_ms": [round(float(v), 2) for v in resid]}


def print_report(r: dict) -> None:
    s = r["daemon_summary"]
    print(f"\n== {r['ppm']:+g} ppm: {r['minutes']} min, daemon exit {r['exit']}, "
          f"{'BOUNDED' if r['bounded'] else 'NOT BOUNDED'}, glitches {r['glitches']}")
    print(f"  clocks against real time: A {r['rate_a_hz']:.2f} Hz, B {r['rate_b_hz']:.2f} Hz: B - A "
          f"{r['real_drift_ppm']:+.1f} ppm (set {r['ppm']:+g}; the rest is cycles jackd lost under load)")
    print(f"  recordings: lag slope {r.get('measured_drift_ppm', float('nan')):+.1f} ppm; residual delay range "
          f"{r['residual_range_ms']:.1f} ms, trend "
          f"{r.get('residual_trend_ms_per_min', float('nan')):+.2f} ms/min over {r['windows']} windows; "
          f"delay steps {r.get('delay_steps')}, dropouts {r.get('dropouts')}")
    print(f"  daemon: latency {r['daemon_latency_ms_min']:.1f}-{r['daemon_latency_ms_max']:.1f} ms after "
          f"{SETTLE_S:.0f} s; summary " + ", ".join(f"{k} {v:g}" for k, v in s.items() if k in rt.COUNTERS)
          + f"; result {s.get('result')}")
    print(f"  jackd XRun lines: server A {r['jackd_xruns_a_b'][0]}, server B {r['jackd_xruns_a_b'][1]}; "
          f"recorder overruns: A {r['recorder_overruns_a_b'][0]}, B {r['recorder_overruns_a_b'][1]}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ppm", default="100,-100", help="loopback clock offsets, comma-separated, run at once "
                    "(default 100,-100; 0.1 %% is 1000)")
    ap.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    ap.add_argument("--mode", default="ns", help="dtlnd mode (default ns)")
    ap.add_argument("--dtlnd-args", default="", help="extra arguments for `dtlnd run`, one string")
    ap.add_argument("--shared", help="the shared folder (models/, audio/, alsa-rig/)")
    ap.add_argument("--json", metavar="FILE", help="write the reports as JSON")
    a = ap.parse_args(argv)
    rt.sigint_for_children()
    try:
        ppms = [float(p) for p in a.ppm.split(",") if p]
    except ValueError:
        ap.error(f"--ppm: numbers separated by commas, not {a.ppm!r}")
    if not ppms or a.minutes <= 0.5 or any(abs(p) > 20000 for p in ppms):
        ap.error("--ppm needs 1+ values within +-20000; --minutes must be > 0.5")
    shared = rt.shared_dir(a.shared)
    work = build(Path(tempfile.mkdtemp(prefix="dtlnd-two-clocks-")))
    print(f"two_clocks: {', '.join(f'{p:+g} ppm' for p in ppms)} for {a.minutes:g} min, mode {a.mode}; "
          f"load average {rt.loadavg()}", flush=True)
    pairs: list[Pair] = []
    try:
        for p in ppms:
            pairs.append(Pair(p, work, shared, a.mode, shlex.split(a.dtlnd_args)))
    except SystemExit:
        for pr in pairs:
            pr.finish()
        return 70
    try:
        time.sleep(60 * a.minutes)
    except KeyboardInterrupt:
        print("interrupted: reporting what was recorded", flush=True)
    reports = [pr.finish() for pr in pairs]
    print(f"\nload average at the end {rt.loadavg()}")
    for r in reports:
        print_report(r)
    if a.json:
        Path(a.json).write_text(json.dumps({"settings": reports}, indent=1))
    return 0 if all(r["bounded"] and r["glitches"] == 0 for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())

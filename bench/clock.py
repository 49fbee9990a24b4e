"""clock: shared vs separate on the audio rig: CPU s per audio s, end-to-end delay, glitches.

Runs alternate shared / separate (``--runs`` each, ``--seconds`` long), on a
rig of its own (tests/rig.py; needs jackd2, alsa-utils and the models in
$DTLND_MODEL_DIR).  Both capture the same 2 channels (mic and reference
buses): shared through ``rig_duplex``, separate through ``rig_aec_in`` and
``rig_loop_play``.  CPU is the daemon's utime+stime from /proc/PID/stat (all
threads) over the audio time between "audio flowing" and SIGTERM; the delay
is the cross-correlation of the mic bus and the loopback, recorded in one
JACK cycle; glitches are xruns + deadline misses + gaps from ``--measure``'s
summary plus all-zero 8 ms blocks inside the loopback's sound.

    PYTHONPATH=. DTLND_MODEL_DIR=/work/shared/models python bench/clock.py --shared /work/shared
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from rig import RATE, Recorder, Rig, daemon, kill_leftovers, lag, play, rig_dir
from rigtools import cpu_seconds

MODES = {"shared": ("--input", "rig_duplex", "--output", "rig_duplex", "--clock", "shared"),
         "separate": ("--input", "rig_aec_in", "--output", "rig_loop_play", "--clock", "separate")}


def one_run(rig: Rig, clock: str, mode: str, model: str, src: Path, seconds: float, tmp: Path,
            k: int) -> dict[str, Any]:
    d = daemon(rig, *MODES[clock], "--input-channels", "2", "--mode", mode, "--model", model,
               "--output-format", "FLOAT_LE", "--measure", env=dict(rig.env))
    d.wait_for("audio flowing", timeout=60)
    rec = Recorder(rig, tmp / f"{clock}{k}.raw", pcm="probe_mic_loop", channels=2)
    player = play(rig, src)
    time.sleep(1.0)
    c0, t0 = cpu_seconds([d.pid]), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds([d.pid]), time.monotonic()
    player.send_signal(signal.SIGINT)
    player.wait(10)
    x = rec.stop()
    d.signal(signal.SIGTERM)
    d.wait(15)
    delay = 1000.0 * lag(x[:, 1], x[:, 0], max_lag=RATE // 2) / RATE
    shift = round(delay * RATE / 1000.0)
    y, mic = x[shift:, 1], x[: len(x) - shift, 0]
    n = len(y) // 128
    # Dropouts: 8 ms of exact zeros out while the mic bus (shifted by the delay) had sound.
    zero_blocks = int(np.sum(~np.any(y[: n * 128].reshape(n, 128) != 0, axis=1)
                             & np.any(mic[: n * 128].reshape(n, 128) != 0, axis=1)))
    m = re.search(r"xruns: input overflow (\d+), output underflow (\d+); deadline misses (\d+)", d.stdout)
    g = re.search(r"lost audio: (\d+) gaps", d.stdout)
    flagged = (sum(map(int, m.groups())) if m else -1) + (int(g.group(1)) if g else 0)
    return {"cpu": (c1 - c0) / (t1 - t0), "delay": delay, "glitches": flagged + zero_blocks,
            "flagged": flagged, "zero_blocks": zero_blocks, "summary": "; ".join(
                ln.strip() for ln in d.stdout.splitlines() if ln.startswith(("  xruns:", "  lost audio:")))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("DTLND_SHARED", "/work/shared")),
                    help="the shared folder with alsa-rig/ and audio/")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--mode", default="ns", help="ns or aec (the reference is the mic bus at half level)")
    ap.add_argument("--model", default="dtln_ns_quant")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dtlnd-clock-"))
    mic, _ = sf.read(a.shared / "audio" / "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav", dtype="float32")
    n = int((a.seconds + 4) * RATE)
    speech = np.tile(mic, n // len(mic) + 1)[:n]
    src = tmp / "src.wav"
    sf.write(src, np.stack([speech, speech * 0.5], axis=1), RATE, subtype="FLOAT")
    rig = Rig(rig_dir(a.shared), tmp, "clk")
    rig.start()
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in MODES}
    try:
        for k in range(a.runs):
            for clock in MODES:  # A B A B ...
                r = one_run(rig, clock, a.mode, a.model, src, a.seconds, tmp, k)
                results[clock].append(r)
                print(f"run {k + 1} {clock:8s} cpu {r['cpu']:.4f} s/s  delay {r['delay']:.1f} ms  "
                      f"glitches {r['glitches']:.0f} (xruns+misses+gaps {r['flagged']:.0f}, "
                      f"zero blocks {r['zero_blocks']:.0f})", flush=True)
    finally:
        kill_leftovers()
        rig.stop()
    med = {c: {key: statistics.median(r[key] for r in rs) for key in ("cpu", "delay", "glitches")}
           for c, rs in results.items()}
    for c, v in med.items():
        print(f"median {c:8s} cpu {v['cpu']:.4f} s/s  delay {v['delay']:.1f} ms  glitches {v['glitches']:.0f}")
    print(f"ratio shared/separate: cpu {med['shared']['cpu'] / med['separate']['cpu']:.2f}, "
          f"delay {med['shared']['delay'] / med['separate']['delay']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

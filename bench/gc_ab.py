"""The garbage-collection policy's effect (dtlnd.gcpolicy), measured on the audio rig.

Runs ``dtlnd run --measure --duration SECONDS`` on a file-fed rig
microphone, alternating the managed policy and ``DTLND_GC=python`` (A B A B
...), and prints each run's engine mean/p99/max per block and result, then
the medians and the ratio managed / python.  Needs the rig (tests/rig.py)
and the shared models and recordings.

    python bench/gc_ab.py [--pairs 4] [--seconds 20] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rig import Rig, daemon, write_raw  # noqa: E402

SPEECH = "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk_mic.wav"
ENGINE = re.compile(r"engine per block[^:]*: mean ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    a = ap.parse_args()
    os.environ.setdefault("DTLND_MODEL_DIR", str(a.shared / "models"))
    root = Path(tempfile.mkdtemp(prefix="dtlnd-gc-ab-"))
    rig = Rig(a.shared / "alsa-rig", root, "gcab")
    rig.start()
    runs: dict[str, list[tuple[float, ...]]] = {"managed": [], "python": []}
    try:
        x, _ = sf.read(a.shared / "audio" / SPEECH, dtype="float32")
        reps = int(a.seconds * 16000 / len(x)) + 3
        x = np.tile(x, reps) + np.random.default_rng(1).standard_normal(len(x) * reps).astype(np.float32) * 1e-4
        raw = write_raw(root / "speech.raw", x)
        for _ in range(a.pairs):
            for policy in ("managed", "python"):
                env = rig.with_env(RIG_IN_FILE=str(raw), PYTHONPATH=str(REPO), DTLND_RUNTIME_DIR=str(root / "run"))
                if policy == "python":
                    env["DTLND_GC"] = "python"
                d = daemon(rig, "--input", "rig_file_mic_in", "--output", "rig_loop_play", "--output-format",
                           "FLOAT_LE", "--measure", "--duration", a.seconds, env=env)
                d.wait(a.seconds + 60)
                m = ENGINE.search(d.stdout)
                if m is None:
                    print(f"{policy}: no summary\n{d.stderr}", file=sys.stderr)
                    continue
                runs[policy].append(tuple(map(float, m.groups())))
                print(f"{policy:8s} mean {m.group(1)} p99 {m.group(2)} max {m.group(3)} ms  "
                      f"{d.stdout.strip().splitlines()[-1].strip()}", flush=True)
    finally:
        rig.stop()
    med = {k: np.median(np.array(v), axis=0) for k, v in runs.items() if v}
    for k, v in med.items():
        print(f"{k:8s} median of {len(runs[k])}: mean {v[0]:.3f} p99 {v[1]:.3f} max {v[2]:.3f} ms")
    if len(med) == 2:
        r = med["managed"] / med["python"]
        print(f"managed / python: mean {r[0]:.2f} p99 {r[1]:.2f} max {r[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

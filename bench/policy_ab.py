"""The interpreter policies' effect (dtlnd.gcpolicy, dtlnd.gil), measured on the audio rig.

Runs ``dtlnd run --measure --duration SECONDS`` on a file-fed rig input,
alternating the daemon as it is (A) and with one policy undone through its
environment variable (B; default ``DTLND_GC=python``, Python's own garbage
collection; ``--b DTLND_SWITCH_INTERVAL=0.005``: Python's own switch
interval), A B A B ..., and prints each run's engine mean/p99/max per block
and result, then the medians and the ratio A / B.  ``--mode aec`` runs echo
cancellation on the AEC-challenge far-end take (the alignment estimator's
thread then runs too).  Needs the rig (tests/rig.py) and the shared models
and recordings.

    python bench/policy_ab.py [--b NAME=VALUE] [--mode ns|aec] [--pairs 4] [--seconds 20] [--shared ../shared]
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
FAR = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk"  # _mic.wav and _lpb.wav
ENGINE = re.compile(r"engine per block[^:]*: mean ([\d.]+) ms, p99 ([\d.]+) ms, max ([\d.]+) ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--b", default="DTLND_GC=python", metavar="NAME=VALUE", help="the environment of run B")
    ap.add_argument("--mode", choices=("ns", "aec"), default="ns")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    a = ap.parse_args()
    name, sep, value = a.b.partition("=")
    if not sep or not name:
        ap.error(f"--b {a.b!r}: give NAME=VALUE")
    os.environ.setdefault("DTLND_MODEL_DIR", str(a.shared / "models"))
    root = Path(tempfile.mkdtemp(prefix="dtlnd-gc-ab-"))
    rig = Rig(a.shared / "alsa-rig", root, "ab")
    rig.start()
    runs: dict[str, list[tuple[float, ...]]] = {"A": [], "B": []}
    try:
        audio = a.shared / "audio"
        if a.mode == "aec":
            mic, _ = sf.read(audio / f"{FAR}_mic.wav", dtype="float32")
            lpb, _ = sf.read(audio / f"{FAR}_lpb.wav", dtype="float32")
            n = min(len(mic), len(lpb))
            x = np.stack([mic[:n], lpb[:n]], axis=1)
        else:
            x = sf.read(audio / SPEECH, dtype="float32")[0][:, None]
        reps = int(a.seconds * 16000 / len(x)) + 3
        x = np.tile(x, (reps, 1))
        x += np.random.default_rng(1).standard_normal(x.shape).astype(np.float32) * 1e-4
        raw = write_raw(root / "speech.raw", x)
        pcm = "rig_file_aec_in" if a.mode == "aec" else "rig_file_mic_in"
        print(f"A: dtlnd as it is; B: {name}={value}; mode {a.mode}", flush=True)
        for _ in range(a.pairs):
            for policy in ("A", "B"):
                env = rig.with_env(RIG_IN_FILE=str(raw), PYTHONPATH=str(REPO), DTLND_RUNTIME_DIR=str(root / "run"))
                if policy == "B":
                    env[name] = value
                d = daemon(rig, "--input", pcm, "--mode", a.mode, "--output", "rig_loop_play", "--output-format",
                           "FLOAT_LE", "--measure", "--duration", a.seconds, env=env)
                d.wait(a.seconds + 60)
                m = ENGINE.search(d.stdout)
                if m is None:
                    print(f"{policy}: no summary\n{d.stderr}", file=sys.stderr)
                    continue
                runs[policy].append(tuple(map(float, m.groups())))
                print(f"{policy} mean {m.group(1)} p99 {m.group(2)} max {m.group(3)} ms  "
                      f"{d.stdout.strip().splitlines()[-1].strip()}", flush=True)
    finally:
        rig.stop()
    med = {k: np.median(np.array(v), axis=0) for k, v in runs.items() if v}
    for k, v in med.items():
        print(f"{k} median of {len(runs[k])}: mean {v[0]:.3f} p99 {v[1]:.3f} max {v[2]:.3f} ms")
    if len(med) == 2:
        r = med["A"] / med["B"]
        print(f"A / B: mean {r[0]:.2f} p99 {r[1]:.2f} max {r[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

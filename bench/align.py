"""Figures behind the reference-alignment defaults (README, "Reference alignment").

* ``curve``: the residual echo of an AEC pair on the AEC-challenge far-end
  take for each lead of the reference over the echo (why ``ref_lead`` is 40);
* ``policy``: the live hop path on shifted, jumping and drifting references,
  resetting the echo canceller's LSTM states on every change, on changes over
  `RESET_STEP_HOPS` (the default), or never (why the rule is what it is);
* ``cost``: the aligned hop wrapper's time per hop against a bare call
  (alternating rounds), and the estimator's CPU seconds per audio second.

    python bench/align.py [--part curve|policy|cost|all] [--model dtln_aec_128_quant] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtlnd import align, delayline, engine
from dtlnd.constants import RATE
from dtlnd.offline import enhance

TAKE = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk"
LEADS = (-40, -10, 0, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300)


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


def shifted(x: np.ndarray, samples: int) -> np.ndarray:
    """``x`` delayed by ``samples`` (negative: earlier), same length, zero-filled."""
    y = np.zeros_like(x)
    if samples >= 0:
        y[samples:] = x[:len(x) - samples]
    else:
        y[:samples] = x[-samples:]
    return y


def load(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    mic, _ = sf.read(str(shared / "audio" / f"{TAKE}_mic.wav"), dtype="float32")
    lpb, _ = sf.read(str(shared / "audio" / f"{TAKE}_lpb.wav"), dtype="float32")
    n = min(len(mic), len(lpb))
    return mic[:n], lpb[:n]


def curve(proc, mic: np.ndarray, lpb: np.ndarray) -> None:
    found = align.align_file(mic, lpb, 40, 1000)
    assert found.lag is not None, "no echo found in the take"
    lag = found.lag
    stream = engine.BlockStream(proc)
    print(f"curve: the take's echo trails its reference by {align.samples_to_ms(lag):.1f} ms; "
          f"microphone {db(mic):.1f} dBFS")
    print(f"{'lead ms':>8} {'residual dBFS':>14}")
    for lead in LEADS:
        far = shifted(lpb, lag - align.ms_to_samples(lead))  # now leads the echo by `lead`
        print(f"{lead:>8} {db(enhance(stream, mic, far)):>14.1f}", flush=True)


def live(proc, mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, delayline.AlignedProcessor]:
    """The aligned hop path with the estimator polled every 31 hops, as its worker does."""
    p = delayline.AlignedProcessor(proc, "auto", 1000, 40, start=False)
    p.reset()
    estimator = p.alignment
    assert isinstance(estimator, delayline.Aligner)
    out = np.zeros(len(mic) // 128 * 128, np.float32)
    for k in range(len(out) // 128):
        s = slice(k * 128, (k + 1) * 128)
        p.process_hop(mic[s], far[s], out[s])
        if k % 31 == 30:
            estimator.poll()
    return out, p


def settled(y: np.ndarray, limit: float = -60.0) -> tuple[float, int]:
    """(seconds until every later 0.5 s block is at or below ``limit``, blocks above it)."""
    b = RATE // 2
    levels = [db(y[i:i + b]) for i in range(0, len(y) - b + 1, b)]
    bad = [i for i, v in enumerate(levels) if v > limit]
    return ((bad[-1] + 1) * 0.5 if bad else 0.0), len(bad)


def policy(proc, mic: np.ndarray, lpb: np.ndarray) -> None:
    ms = align.ms_to_samples
    mic2, mic3 = np.tile(mic, 2), np.tile(mic, 3)
    n3 = len(mic3)
    drift = np.interp(np.arange(n3) + np.linspace(ms(100), ms(160), n3), np.arange(n3), np.tile(lpb, 3))
    cases = {
        "300 ms early": (mic3, shifted(np.tile(lpb, 3), -ms(300))),
        "jump 100 -> 250 ms early": (mic2, np.concatenate([shifted(lpb, -ms(100)), shifted(lpb, -ms(250))])),
        "jump as recorded -> 80 ms": (mic2, np.concatenate([lpb, shifted(lpb, -ms(80))])),
        "drift 100 -> 160 ms early": (mic3, drift.astype(np.float32)),
    }
    default = align.RESET_STEP_HOPS
    print("policy: residual over the run; 'settled' = every later 0.5 s block <= -60 dBFS")
    print(f"{'case':<28} {'reset when step >':>17} {'settled s':>10} {'blocks > -60':>13} {'after 5 s dBFS':>15}")
    try:
        for name, (m, f) in cases.items():
            for step, label in ((0, "0 hops"), (default, f"{default} hops"), (10 ** 6, "never")):
                delayline.RESET_STEP_HOPS = step
                y, _ = live(proc, m, f)
                t, bad = settled(y)
                print(f"{name:<28} {label:>17} {t:>10.1f} {bad:>13} {db(y[5 * RATE:]):>15.1f}", flush=True)
    finally:
        delayline.RESET_STEP_HOPS = default


class _Bare:
    """A hop processor that does nothing: what the wrapper costs on its own."""

    channels, delay = 2, 384

    class pair:
        @staticmethod
        def reset() -> None:
            pass

    def process_hop(self, mic, far, out) -> None:
        pass

    def reset(self) -> None:
        pass


def cost(proc, mic: np.ndarray, lpb: np.ndarray, rounds: int = 10, per_round: int = 20000) -> None:
    bare = _Bare()
    wrapped = delayline.AlignedProcessor(bare, "auto", 1000, 40, start=False)
    m, f, o = mic[:128].copy(), lpb[:128].copy(), np.zeros(128, np.float32)
    times: dict[str, list[float]] = {"bare call": [], "aligned hop": []}
    for _ in range(rounds):
        for name, hop in (("bare call", bare.process_hop), ("aligned hop", wrapped.process_hop)):
            t0 = time.perf_counter_ns()
            for _ in range(per_round):
                hop(m, f, o)
            times[name].append((time.perf_counter_ns() - t0) / per_round / 1000)
    for name, v in times.items():
        print(f"cost: {name}: median {statistics.median(v):.2f} us per hop over {rounds} alternating rounds "
              f"(min {min(v):.2f}, max {max(v):.2f})")
    y, p = live(proc, np.tile(mic, 2), shifted(np.tile(lpb, 2), -align.ms_to_samples(300)))
    a = p.alignment
    assert isinstance(a, delayline.Aligner)
    print(f"cost: estimator {a.cpu_per_s:.4f} CPU s per audio s over {a.audio_s:.1f} s "
          f"(thread CPU time of its rounds); {a.describe()}; residual after 5 s {db(y[5 * RATE:]):.1f} dBFS")


def main() -> int:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("curve", "policy", "cost", "all"), default="all")
    ap.add_argument("--model", default="dtln_aec_128_quant")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("DTLND_SHARED", here.parent / "shared")))
    args = ap.parse_args()
    mic, lpb = load(args.shared)
    proc = engine.build("aec", args.model, model_dir=args.shared / "models")
    print(f"model {args.model}; take {TAKE}")
    for part, fn in (("curve", curve), ("policy", policy), ("cost", cost)):
        if args.part in (part, "all"):
            fn(proc, mic, lpb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

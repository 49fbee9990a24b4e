"""``dtlnd bench``: the engine's time per block against the bare ``invoke()`` floor.

The floor is the two interpreter calls alone, on the same interpreters and
inputs; the ratio engine/floor is what the framing, FFTs and copies cost.
Engine and floor are timed in alternating rounds so that a busy machine
skews both alike.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from . import dsp, runtime, store
from .constants import SHIFT
from .engine import EchoCanceller, NoiseSuppressor
from .errors import DtlndError
from .offline import FileOptions, load_signals

ROUNDS = 10


@dataclass(frozen=True)
class Timing:
    """Microseconds per block."""

    mean: float
    median: float
    p99: float

    @classmethod
    def of(cls, ns: np.ndarray) -> "Timing":
        us = ns / 1000.0
        return cls(round(float(us.mean()), 2), round(float(np.median(us)), 2),
                   round(float(np.percentile(us, 99)), 2))


@dataclass(frozen=True)
class BenchResult:
    model: str
    kind: str
    runtime: str
    fft: str
    threads: int
    blocks: int
    engine: Timing
    floor: Timing
    ratio: float
    budget_share: float  # engine mean / 8 ms
    alignment: str = ""  # aec with ref_delay: the delay lines are in the engine time; the estimator's cost


def _time(fn: Callable[[int], None], count: int, out: np.ndarray, start: int) -> None:
    clock = time.perf_counter_ns
    for i in range(count):
        t0 = clock()
        fn(i)
        out[start + i] = clock() - t0


def bench_pair(name: str, model_dir: Optional[Path], rt: str, mic: np.ndarray, far: np.ndarray,
               blocks: int = 3000, threads: int = 1, fft: str = "auto",
               ref_delay: Union[str, float] = 0) -> BenchResult:
    """Time ``blocks`` hops of ``mic``/``far`` (cycled) through one model pair."""
    from .config import Settings
    from .delayline import wrap

    pair = runtime.ModelPair.load(name, model_dir, rt, threads)
    bare = NoiseSuppressor(pair, fft) if pair.kind == "ns" else EchoCanceller(pair, fft)
    fft_backend = bare.fft_backend
    proc = wrap(bare, pair.kind, ref_delay, Settings.ref_delay_max, Settings.ref_lead)
    hops = len(mic) // SHIFT
    mic_hops = mic[: hops * SHIFT].reshape(hops, SHIFT)
    far_hops = far[: hops * SHIFT].reshape(hops, SHIFT)
    out = np.zeros(SHIFT, np.float32)
    hop = proc.process_hop
    inv1, inv2 = pair.m1.invoke, pair.m2.invoke

    def engine_block(i: int) -> None:
        j = i % hops
        hop(mic_hops[j], far_hops[j], out)

    def floor_block(i: int) -> None:
        inv1()
        inv2()

    per_round = -(-blocks // ROUNDS)
    engine_ns = np.zeros(per_round * ROUNDS, np.int64)
    floor_ns = np.zeros(per_round * ROUNDS, np.int64)
    _time(engine_block, 200, np.zeros(200, np.int64), 0)  # warm-up: caches, FFTW, XNNPACK
    gc.disable()
    try:
        for r in range(ROUNDS):
            _time(lambda i: engine_block(r * per_round + i), per_round, engine_ns, r * per_round)
            _time(floor_block, per_round, floor_ns, r * per_round)
    finally:
        gc.enable()
    e, f = Timing.of(engine_ns), Timing.of(floor_ns)
    report = getattr(proc, "alignment", None)
    aligned = "" if report is None else (f"{report.describe()}; estimator {report.cpu_per_s:.4f} CPU s "
                                         "per audio s (worker thread, not in the engine time)")
    return BenchResult(name, pair.kind, pair.runtime, fft_backend, threads, len(engine_ns), e, f,
                       round(e.mean / f.mean, 3), round(e.mean / (SHIFT / 16.0) / 1000.0, 4), aligned)


def bench_signals(audio: Optional[Path], ref: Optional[Path]) -> tuple[np.ndarray, np.ndarray, str]:
    """Microphone and far-end signals for the benchmark, and a label for them."""
    if audio is None:
        rng = np.random.default_rng(0)
        mic = (0.1 * rng.standard_normal(16000 * 10)).astype(np.float32)
        return mic, np.roll(mic, 800) * np.float32(0.5), "synthetic noise (pass --audio FILE for real audio)"
    mic, _, _ = load_signals(audio, FileOptions(), need_far=False)
    if ref is not None:
        far, _, _ = load_signals(ref, FileOptions(), need_far=False)
        n = min(len(mic), len(far))
        return mic[:n], far[:n], f"{audio.name} + {ref.name}"
    return mic, (np.roll(mic, 800) * np.float32(0.5)), f"{audio.name} (reference: itself, delayed)"


def _other_form_only(name: str, model_dir: Optional[Path], rt: str) -> bool:
    """True when the pair is installed, but not in a form runtime ``rt`` loads."""
    return store.locate(name, model_dir) is not None and store.locate(name, model_dir,
                                                                      runtime.formats_for(rt)) is None


def run(models: list[str], model_dir: Optional[Path], runtimes: list[str], audio: Optional[Path],
        ref: Optional[Path], blocks: int, threads: int, fft: str, as_json: bool,
        ref_delay: Union[str, float] = 0) -> int:
    mic, far, label = bench_signals(audio, ref)
    names = models or store.pair_names(model_dir)
    if not names:
        raise DtlndError("no model pairs found: run 'dtlnd models fetch' or pass --model-dir")
    rts = runtimes or runtime.installed_runtimes()
    results: list[BenchResult] = []
    errors: list[str] = []
    if not as_json:
        print(f"input: {label}; {blocks} blocks per pair; FFT: {fft if fft != 'auto' else dsp.default_backend()}")
        print(f"{'model':<22} {'runtime':<15} {'engine us/block (mean med p99)':>32} "
              f"{'floor us (mean med p99)':>27} {'ratio':>6} {'of 8ms':>7}")
    for name in names:
        for rt in rts:
            try:
                if not runtimes and _other_form_only(name, model_dir, rt):
                    continue  # e.g. a TF-Lite-only pair on onnxruntime: nothing to time, nothing wrong
                r = bench_pair(name, model_dir, rt, mic, far, blocks, threads, fft, ref_delay)
            except DtlndError as exc:
                errors.append(f"{name} on {rt}: {exc}")
                continue
            results.append(r)
            if not as_json:
                e, f = r.engine, r.floor
                print(f"{r.model:<22} {r.runtime:<15} {e.mean:>10.1f} {e.median:>10.1f} {e.p99:>10.1f} "
                      f"{f.mean:>8.1f} {f.median:>8.1f} {f.p99:>9.1f} {r.ratio:>6.2f} {100 * r.budget_share:>6.1f}%",
                      flush=True)
                if r.alignment:  # a note, on stderr: stdout stays one row per pair
                    print(f"{r.model} on {r.runtime}: {r.alignment}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"input": label, "results": [asdict(r) for r in results], "errors": errors}, indent=2))
    else:
        for err in errors:
            print(f"skipped: {err}")
    return 0 if results else 1

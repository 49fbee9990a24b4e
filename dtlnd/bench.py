"""``dtlnd bench``: the engine's time per block against the bare ``invoke()`` floor.

The floor is the two interpreter calls alone, on the same interpreters and
inputs; the ratio engine/floor is what the framing, FFTs and copies cost.
Engine, pipelined engine and floor are timed in alternating rounds so that
a busy machine skews them alike.

Two paces: the hot loop (one block straight after another) and, with
``--paced``, one block every 8 ms as in real time, sleeping in between:
there caches and branch predictors go cold, so a block costs several times
its hot-loop time, and that is what the daemon pays.  A paced row also
gives CPU seconds per audio second: the process's user + system time (all
threads, as /proc/PID/stat counts it) over its paced blocks.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from . import dsp, pairs, runtime
from .constants import BUDGET_MS, BUDGET_NS, SHIFT
from .engine import EchoCanceller, NoiseSuppressor
from .errors import DtlndError
from .offline import FileOptions, load_signals
from .pipeline import PIPELINE_ABOVE, Pipelined, pipelined

ROUNDS = 10


@dataclass(frozen=True)
class Timing:
    """Microseconds per block."""

    mean: float
    median: float
    p99: float

    @classmethod
    def of(cls, ns: np.ndarray) -> Timing:
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
    paced: bool = False
    pipeline: bool = False
    cpu_per_s: Optional[float] = None  # CPU seconds per audio second (paced rows)
    alignment: str = ""  # aec with ref_delay: the delay lines are in the engine time; the estimator's cost


def _time(fn: Callable[[int], None], count: int, out: np.ndarray, start: int) -> None:
    clock = time.perf_counter_ns
    for i in range(count):
        t0 = clock()
        fn(i)
        out[start + i] = clock() - t0


def _time_paced(fn: Callable[[int], None], count: int, out: np.ndarray, start: int) -> int:
    """One call every 8 ms (absolute deadlines); returns the CPU ns the process used meanwhile."""
    clock, sleep, cpu = time.perf_counter_ns, time.sleep, time.process_time_ns
    c0 = cpu()
    due = clock()
    for i in range(count):
        due += BUDGET_NS
        wait = due - clock()
        if wait > 0:
            sleep(wait / 1e9)
        t0 = clock()
        fn(i)
        out[start + i] = clock() - t0
    return cpu() - c0


def _offset(fn: Callable[[int], None], base: int) -> Callable[[int], None]:
    return lambda i: fn(base + i)


def _processor(pair: runtime.ModelPair, fft: str, pipeline: bool,
               ref_delay: Union[str, float]) -> tuple[Any, Optional[Pipelined]]:
    """The processor to time, and its pipelined engine inside (None when sequential)."""
    from .config import Settings
    from .delayline import wrap

    proc: Any = NoiseSuppressor(pair, fft) if pair.kind == "ns" else EchoCanceller(pair, fft)
    pipe = pipelined(proc) if pipeline else None
    return wrap(pipe or proc, pair.kind, ref_delay, Settings.ref_delay_max, Settings.ref_lead), pipe


def bench_pair(name: str, model_dir: Optional[Path], rt: str, mic: np.ndarray, far: np.ndarray,
               blocks: int = 3000, threads: int = 1, fft: str = "auto", paced: bool = False,
               pipeline: bool = False, ref_delay: Union[str, float] = 0) -> list[BenchResult]:
    """Time ``blocks`` hops of ``mic``/``far`` (cycled) through one model pair.

    One row for the sequential engine and, with ``pipeline``, one for the
    pipelined engine (on its own interpreters), both against the same floor.
    """
    pair = runtime.ModelPair.load(name, model_dir, rt, threads)
    built = [_processor(pair, fft, False, ref_delay)]
    if pipeline:
        built.append(_processor(runtime.ModelPair.load(name, model_dir, rt, threads), fft, True, ref_delay))
    procs = [proc for proc, _ in built]
    pipes = [pipe for _, pipe in built]
    hops = len(mic) // SHIFT
    mic_hops = mic[: hops * SHIFT].reshape(hops, SHIFT)
    far_hops = far[: hops * SHIFT].reshape(hops, SHIFT)
    out = np.zeros(SHIFT, np.float32)
    inv1, inv2 = pair.m1.invoke, pair.m2.invoke

    def engine_block(hop: Callable) -> Callable[[int], None]:
        def block(i: int) -> None:
            j = i % hops
            hop(mic_hops[j], far_hops[j], out)
        return block

    def floor_block(i: int) -> None:
        inv1()
        inv2()

    per_round = -(-blocks // ROUNDS)
    total = per_round * ROUNDS
    variants = [engine_block(p.process_hop) for p in procs] + [floor_block]
    times = [np.zeros(total, np.int64) for _ in variants]
    cpu = [0] * len(variants)
    for v in variants[:-1]:
        _time(v, 200, np.zeros(200, np.int64), 0)  # warm-up: caches, FFTW, XNNPACK
    gc.disable()
    try:
        for r in range(ROUNDS):
            for k, v in enumerate(variants):
                block = _offset(v, r * per_round)
                if paced:
                    cpu[k] += _time_paced(block, per_round, times[k], r * per_round)
                else:
                    _time(block, per_round, times[k], r * per_round)
                pipe = pipes[k] if k < len(procs) else None
                if pipe is not None:
                    pipe.sync()  # its last job finishes inside this round
    finally:
        gc.enable()
        for p in procs:
            p.close()
    f = Timing.of(times[-1])
    rows = []
    for k, p in enumerate(procs):
        e = Timing.of(times[k])
        report = getattr(p, "alignment", None)
        aligned = "" if report is None else (f"{report.describe()}; estimator {report.cpu_per_s:.4f} CPU s "
                                             "per audio s (worker thread, not in the engine time)")
        rows.append(BenchResult(name, pair.kind, pair.runtime, procs[0].fft_backend, threads, total, e, f,
                                round(e.mean / f.mean, 3), round(e.mean / (BUDGET_NS / 1000.0), 4), paced,
                                pipes[k] is not None,
                                round(cpu[k] / (total * BUDGET_NS), 4) if paced else None, aligned))
    return rows


def recommend(results: list[BenchResult]) -> list[str]:
    """What to run here, from the paced rows: per pair, sequential or pipelined, or too slow.

    The rule of ``pipeline: auto``: pipeline when the median paced
    sequential block takes more than half the budget; a pair fits when its
    p99 stays under the budget.  A fast median with a slow p99 means a busy
    or throttled CPU, not a slow model.
    """
    lines = []
    paced = [r for r in results if r.paced]
    for name in dict.fromkeys(r.model for r in paced):
        seq = next((r for r in paced if r.model == name and not r.pipeline), None)
        pipe = next((r for r in paced if r.model == name and r.pipeline), None)
        if seq is None:
            continue
        ms, p99 = seq.engine.median / 1000.0, seq.engine.p99 / 1000.0
        if ms / BUDGET_MS <= PIPELINE_ABOVE:
            if p99 < BUDGET_MS:
                lines.append(f"{name}: fits sequentially (median {ms:.2f} ms per 8 ms block paced, "
                             f"{seq.cpu_per_s:.3f} CPU s/s): pipeline: false")
            else:
                lines.append(f"{name}: median {ms:.2f} ms per block, but 1 % take over {p99:.1f} ms: "
                             "the CPU is busy or throttled; free it, or raise buffer_blocks, before "
                             "trusting this pair")
        elif pipe is None:
            lines.append(f"{name}: median {ms:.2f} ms sequential is over half the budget: "
                         "rerun with --pipeline to see whether pipelining helps")
        elif pipe.engine.p99 / 1000.0 < BUDGET_MS:
            lines.append(f"{name}: median {ms:.2f} ms sequential is over half the budget; pipelined "
                         f"{pipe.engine.median / 1000.0:.2f} ms (p99 {pipe.engine.p99 / 1000.0:.2f}): pipeline: true "
                         "(8 ms more latency)")
        else:
            lines.append(f"{name}: too slow here (median {ms:.2f} ms sequential, p99 {pipe.engine.p99 / 1000.0:.2f} ms "
                         f"pipelined, budget {BUDGET_MS:g} ms): use a smaller model")
    return lines


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
    return pairs.locate(name, model_dir) is not None and pairs.locate(name, model_dir,
                                                                      runtime.formats_for(rt)) is None


def run(models: list[str], model_dir: Optional[Path], runtimes: list[str], audio: Optional[Path],
        ref: Optional[Path], blocks: int, threads: int, fft: str, as_json: bool, paced: bool = False,
        pipeline: bool = False, paced_blocks: int = 1000, ref_delay: Union[str, float] = 0) -> int:
    mic, far, label = bench_signals(audio, ref)
    names = models or pairs.pair_names(model_dir)
    if not names:
        raise DtlndError("no model pairs found: run 'dtlnd models fetch' or pass --model-dir")
    rts = runtimes or runtime.installed_runtimes()
    results: list[BenchResult] = []
    errors: list[str] = []
    if not as_json:
        print(f"input: {label}; {blocks} blocks per pair hot{f', {paced_blocks} paced (one per 8 ms)' if paced else ''}"
              f"; FFT: {fft if fft != 'auto' else dsp.default_backend()}")
        wide = paced or pipeline  # the plain table keeps its ten columns
        print(f"{'model':<22} {'runtime':<15} {'pace  pipe ' if wide else ''}"
              f"{'engine us/block (mean med p99)':>32} {'floor us (mean med p99)':>27} {'ratio':>6} {'of 8ms':>7}"
              f"{'  CPU s/s' if wide else ''}")
    for name in names:
        for rt in rts:
            if not runtimes and _other_form_only(name, model_dir, rt):
                continue  # e.g. a TF-Lite-only pair on onnxruntime: nothing to time, nothing wrong
            try:
                rows = bench_pair(name, model_dir, rt, mic, far, blocks, threads, fft, False, pipeline, ref_delay)
                if paced:
                    rows += bench_pair(name, model_dir, rt, mic, far, paced_blocks, threads, fft, True, pipeline,
                                       ref_delay)
            except DtlndError as exc:
                errors.append(f"{name} on {rt}: {exc}")
                continue
            results += rows
            if not as_json:
                for r in rows:
                    e, f = r.engine, r.floor
                    cpu = f" {r.cpu_per_s:>8.3f}" if r.cpu_per_s is not None else ""
                    how = f"{'paced' if r.paced else 'hot':<5} {'yes' if r.pipeline else 'no':<4} " if wide else ""
                    print(f"{r.model:<22} {r.runtime:<15} {how}{e.mean:>10.1f} {e.median:>10.1f} {e.p99:>10.1f} "
                          f"{f.mean:>8.1f} {f.median:>8.1f} {f.p99:>9.1f} {r.ratio:>6.2f} "
                          f"{100 * r.budget_share:>6.1f}%{cpu}", flush=True)
                    if r.alignment:  # a note, on stderr: stdout stays one row per pair
                        print(f"{r.model} on {r.runtime}: {r.alignment}", file=sys.stderr, flush=True)
    advice = recommend(results)
    if as_json:
        print(json.dumps({"input": label, "results": [asdict(r) for r in results], "errors": errors,
                          "recommendation": advice}, indent=2))
    else:
        for err in errors:
            print(f"skipped: {err}")
        if advice:
            print("recommendation (from the paced figures):")
            for line in advice:
                print(f"  {line}")
    return 0 if results else 1

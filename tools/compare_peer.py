"""Side by side with the peer (SaneBow/PiDTLN) on the rig: CPU, memory, delay, glitches (issue 10, "Measuring").

Usage, from the repository root:

    python tools/compare_peer.py --peer /path/to/PiDTLN [--configs ns,aec128,aec256]
        [--runs 3] [--seconds 20] [--warmup 3] [--dtlnd-args "ARGS" | "CONFIG:ARGS"]...
        [--variant "NAME:ARGS"]... [--floor] [--invoke-floor] [--threads] [--json [FILE]] [--shared DIR]

The peer's scripts run unchanged from its checkout (nothing of it is copied
here), with ``--latency 0.024`` (its lowest-latency setting) and the rig's
PCMs as devices.  A two-line ``tflite_runtime/interpreter.py`` written into a
temp dir on its PYTHONPATH re-exports ``ai_edge_litert.interpreter``, so both
programs use one runtime; the temp dir's ``models`` links to
``shared/models``, so both load the same files.  The peer needs
python-daemon (``pip install python-daemon``).

Configurations (peer script vs ``dtlnd run``):

    ns      ns.py                vs --mode ns
    aec128  aec.py -m 128        vs --mode aec --model dtln_aec_128_quant
    aec256  aec_mp.py -m 256     vs --mode aec --model dtln_aec_256_quant (add --pipeline with
                                    --dtlnd-args "aec256:--pipeline" once dtlnd has it)

``--dtlnd-args "--buffer-blocks 1"`` goes to every dtlnd run,
``--dtlnd-args "aec256:--pipeline"`` to that configuration's only; repeat it.
``--peer-args`` does the same for the peer's scripts.  ``--variant
"shared:--clock shared"`` adds a dtlnd variant with those flags to every
run's alternation (peer, dtlnd, shared, peer, dtlnd, shared, ...) and a
column to the table; ``--variant "pipelined:aec256:--pipeline"`` adds one
for that configuration only.  ``--floor`` adds a bare duplex passthrough (the rig's
I/O alone) and ``--invoke-floor`` the same passthrough calling the
configuration's two ``invoke()`` once per block and nothing else: about
the least a DTLN program on this runtime and these PCMs can cost, whatever
code it runs around the models.  Note: with pyfftw
installed (its default), the peer's ``aec.py`` builds its output from the
reference's spectrum, not the microphone's: its second ``rfft()`` call
returns the same pyfftw output array as the first and overwrites it
(``aec_mp.py`` copies it).  Its delay figure is then meaningless;
``--peer-args "aec128:--no-fftw"`` runs it on numpy's FFT, which is correct.

Per configuration, runs alternate peer, dtlnd, peer, dtlnd, ... on one rig
with speech looped into its microphone and reference buses.  Each run:
start, wait until the stream runs plus ``--warmup`` s, then over
``--seconds`` of real-time audio measure CPU seconds per audio second (all
threads and child processes), RSS and PSS without JACK's shared memory (at
the end of the window), the end-to-end delay mic -> loopback and the
dropouts and delay steps the probe sees (tools/rigtools.py defines them),
then stop it with SIGINT and count the xruns it reported itself (the peer
prints PortAudio's status flags; dtlnd's ``--measure`` summary counts them).
The table gives medians over the runs and the ratio dtlnd / peer.  It is a
benchmark, not a test: figures vary with the machine's load, printed with
them.

Exit status: 0 done, 2 bad arguments, 66 peer checkout or model missing,
69 a dependency missing, 70 a program did not start.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import rigtools as rt

LATENCY = "0.024"
CONFIGS = {
    "ns": {"script": "ns.py", "peer": ["-i", "rig_mic_in", "-o", "rig_loop_play"], "mode": "ns", "model": None,
           "files": "dtln_ns_quant"},
    "aec128": {"script": "aec.py", "peer": ["-i", "rig_aec_in", "-o", "rig_loop_play", "-m", "128"], "mode": "aec",
               "model": "dtln_aec_128_quant", "files": "dtln_aec_128_quant"},
    "aec256": {"script": "aec_mp.py", "peer": ["-i", "rig_aec_in", "-o", "rig_loop_play", "-m", "256"],
               "mode": "aec", "model": "dtln_aec_256_quant", "files": "dtln_aec_256_quant"},
}
#: ``--floor``: the cheapest duplex program sounddevice allows (what the rig's I/O alone costs); given model
#: files (``--invoke-floor``), it also calls their ``invoke()`` once each per block and does nothing else: about
#: the least a DTLN program on this runtime pays (no FFT, no state copies, no glue).
BARE = """import sys, time
import sounddevice as sd
inp, out, channels, latency, models = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
invokes = []
if models:
    from ai_edge_litert.interpreter import Interpreter
    for path in models:
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        invokes.append(interpreter.invoke)


def callback(indata, outdata, frames, time_info, status):
    outdata[:] = indata[:len(outdata)]
    for invoke in invokes:
        invoke()


with sd.RawStream(device=(inp, out), samplerate=16000, blocksize=128, dtype="float32", latency=latency,
                  channels=(channels, 1), callback=callback):
    print("#" * 20, flush=True)
    while True:
        time.sleep(1)
"""
SHIM = "from ai_edge_litert.interpreter import *  # noqa: F403\nfrom ai_edge_litert.interpreter import Interpreter\n"
PEER_FLAGS = re.compile(r"input overflow|input underflow|output overflow|output underflow|priming output")
SHM_NAMES = ("in_lpb", "est_block", "out_block")  # aec_mp.py's fixed shared-memory blocks
METRICS = ("cpu_s_per_s", "rss_mb", "pss_mb", "delay_ms")
FLOORS = ("bare", "invokes")  # the programs bare.py runs (--floor, --invoke-floor)


def fail(code: int, msg: str) -> None:
    print(f"compare_peer: {msg}", file=sys.stderr)
    sys.exit(code)


def prepare(peer: Path, models: Path, configs: list[str]) -> Path:
    """The peer's working dir (``models`` -> shared models) with the runtime shim; check what it needs."""
    for c in configs:
        if not (peer / CONFIGS[c]["script"]).is_file():
            fail(66, f"{peer / CONFIGS[c]['script']} not found: --peer must name a PiDTLN checkout")
        for i in (1, 2):
            if not (models / f"{CONFIGS[c]['files']}_{i}.tflite").is_file():
                fail(66, f"model file {models / CONFIGS[c]['files']}_{i}.tflite missing: pass --shared DIR")
    for mod, pkg in (("daemon", "python-daemon"), ("ai_edge_litert", "ai-edge-litert")):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True)
        if r.returncode:
            fail(69, f"the peer needs the Python module '{mod}': pip install {pkg}")
    left = [n for n in SHM_NAMES if Path("/dev/shm", n).exists()]
    if "aec256" in configs and left:
        fail(69, f"/dev/shm/{left[0]} exists: an aec_mp.py is running or left it behind; stop it or remove "
             f"/dev/shm/{{{','.join(SHM_NAMES)}}}")
    work = Path(tempfile.mkdtemp(prefix="dtlnd-peer-"))
    (work / "models").symlink_to(models.resolve())
    pkg_dir = work / "shim" / "tflite_runtime"
    pkg_dir.mkdir(parents=True)
    (pkg_dir / "__init__.py").write_text("")
    (pkg_dir / "interpreter.py").write_text(SHIM)
    (work / "bare.py").write_text(BARE)
    return work


def run_one(kind: str, cfg: dict, rig: rt.Rig, ctx: argparse.Namespace, variant: tuple[str, ...] = ()) -> dict:
    """Start one program (``variant``: more dtlnd flags), measure one window, stop it; its figures."""
    if kind in FLOORS:
        pcm = "rig_mic_in" if cfg["mode"] == "ns" else "rig_aec_in"
        cmd = [sys.executable, str(ctx.work / "bare.py"), pcm, "rig_loop_play", "1" if cfg["mode"] == "ns" else "2",
               LATENCY]
        if kind == "invokes":
            cmd += [str(ctx.models / f"{cfg['files']}_{i}.tflite") for i in (1, 2)]
        proc = rt.Proc(cmd, rig.with_env(PYTHONUNBUFFERED="1"), cwd=ctx.work)
        ready = r"^#{20}"
    elif kind == "peer":
        cmd = [sys.executable, str(ctx.peer / cfg["script"]), *cfg["peer"], "--latency", LATENCY, *cfg["peer_extra"]]
        env = rig.with_env(PYTHONPATH=str(ctx.work / "shim"), PYTHONUNBUFFERED="1")
        proc = rt.Proc(cmd, env, cwd=ctx.work)
        ready = r"^#{20}"
    else:
        cmd = rt.dtlnd_cmd(cfg["mode"], cfg["model"], ctx.models, [*cfg["extra"], *variant], None)
        proc = rt.Proc(cmd, rt.dtlnd_env(rig))
        ready = r"^\[\s*[\d.]+ s\]"
    rt.wait_started(proc, ready, "out")
    time.sleep(ctx.warmup)
    probe = rt.ProbeMonitor(rig)
    time.sleep(0.5)  # arecord's own start-up
    t0, c0, th0 = time.monotonic(), rt.cpu_seconds(rt.tree(proc.pid)), rt.thread_cpu(proc.pid)
    time.sleep(ctx.seconds)
    t1, c1, th1 = time.monotonic(), rt.cpu_seconds(rt.tree(proc.pid)), rt.thread_cpu(proc.pid)
    pids = rt.tree(proc.pid)
    rss, pss = rt.memory_mb(pids)
    pf = probe.stop().summary()
    alive = proc.p.poll() is None
    rc = rt.stop(proc)
    if kind == "peer" and rc is None and cfg["script"] == "aec_mp.py":
        for name in SHM_NAMES:  # what aec_mp.py unlinks itself when it can stop cleanly
            Path("/dev/shm", name).unlink(missing_ok=True)
    row = {"program": kind, "cmd": " ".join(cmd[1:]), "exit": rc, "alive_at_end": alive, "processes": len(pids),
           "cpu_s_per_s": (c1 - c0) / (t1 - t0), "threads": rt.thread_shares(th0, th1, t1 - t0),
           "rss_mb": rss, "pss_mb": pss, "delay_ms": pf["delay_ms_median"], "probe": pf}
    if kind == "peer" or kind in FLOORS:
        row["xruns"] = sum(len(PEER_FLAGS.findall(line)) for line in proc.stdout.splitlines())
        row["program_says"] = {}
    else:
        s = rt.dtlnd_summary(proc.stdout)
        row["xruns"] = int(s.get("input_overflow", 0) + s.get("output_underflow", 0))
        row["program_says"] = s
    row["glitches"] = row["xruns"] + pf["dropouts"] + pf["delay_steps"]
    return row


def wait_clients_gone(rig: rt.Rig, timeout: float = 10.0) -> None:
    """Until the last program's JACK clients are gone: the next one registers the same client names."""
    names = ("rig_mic_in:", "rig_aec_in:", "rig_loop_play:")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = subprocess.run(["jack_lsp"], env=rig.env, capture_output=True, text=True).stdout.split()
        if not any(p.startswith(names) for p in ports):
            return
        time.sleep(0.2)


def medians(rows: list[dict]) -> dict:
    # A run whose probe found no window to correlate has no delay (nan): the median is over the others.
    out = {m: float(np.nanmedian([r[m] for r in rows])) if any(np.isfinite(r[m]) for r in rows) else float("nan")
           for m in METRICS}
    out["runs_with_delay"] = sum(bool(np.isfinite(r["delay_ms"])) for r in rows)
    for k in ("xruns", "glitches"):
        out[k] = int(sum(r[k] for r in rows))
    out["dropouts"] = int(sum(r["probe"]["dropouts"] for r in rows))
    out["delay_steps"] = int(sum(r["probe"]["delay_steps"] for r in rows))
    return out


def table(results: dict, runs: int, seconds: float) -> str:
    """One row per configuration and metric; a value and a ratio to the peer per dtlnd program that ran."""
    programs = list(dict.fromkeys(k for res in results.values() for k in res if k != "peer"))
    head = "".join(f" {k} | {k} / peer |" for k in programs)
    lines = [f"medians of {runs} alternating runs of {seconds:g} s each; glitches summed over the runs", "",
             f"| config | metric | peer |{head}", "| --- | --- | --- |" + " --- | --- |" * len(programs)]
    names = {"cpu_s_per_s": ("CPU s per audio s", "{:.3f}"), "rss_mb": ("RSS without JACK shm, MB", "{:.1f}"),
             "pss_mb": ("PSS without JACK shm, MB", "{:.1f}"), "delay_ms": ("delay mic -> loopback, ms", "{:.1f}")}
    for c, res in results.items():
        p = res["peer"]
        for m, (label, f) in names.items():
            cells = "".join(f" {f.format(res[k][m])} | {res[k][m] / p[m] if p[m] else float('nan'):.2f} |"
                            if k in res else " | |" for k in programs)
            lines.append(f"| {c} | {label} | {f.format(p[m])} |{cells}")
        glitches = "".join(f" {res[k]['xruns']} / {res[k]['dropouts']} / {res[k]['delay_steps']} | |"
                           if k in res else " | |" for k in programs)
        lines.append(f"| {c} | glitches: xruns / dropouts / delay steps | {p['xruns']} / {p['dropouts']} / "
                     f"{p['delay_steps']} |{glitches}")
    return "\n".join(lines)


def parse_extra(values: list[str], configs: list[str]) -> dict[str, list[str]]:
    extra: dict[str, list[str]] = {c: [] for c in configs}
    for v in values:
        head, sep, rest = v.partition(":")
        if sep and head in CONFIGS:
            if head in extra:
                extra[head] += shlex.split(rest)
        else:
            for c in configs:
                extra[c] += shlex.split(v)
    return extra


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", required=True, type=Path, help="the peer's checkout (SaneBow/PiDTLN)")
    ap.add_argument("--configs", default="ns,aec128,aec256", help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--runs", type=int, default=3, help="runs per program and configuration (default 3)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured audio per run (default 20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after the stream starts (default 3)")
    ap.add_argument("--dtlnd-args", action="append", default=[], metavar="[CONFIG:]ARGS",
                    help="extra dtlnd run arguments, for every config or for CONFIG only; repeatable")
    ap.add_argument("--peer-args", action="append", default=[], metavar="[CONFIG:]ARGS",
                    help="extra arguments for the peer's script, e.g. \"aec128:--no-fftw\"; repeatable")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:[CONFIG:]ARGS",
                    help="one more dtlnd program in every alternation, with these flags (for CONFIG only); "
                    "repeatable")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the runs and medians as JSON "
                    "(to stdout without FILE; the table then goes to stderr)")
    ap.add_argument("--floor", action="store_true", help="add a bare duplex passthrough (sounddevice RawStream, "
                    "a one-line callback, no model, the peer's latency) to every alternation: the rig's I/O alone")
    ap.add_argument("--invoke-floor", action="store_true", help="add the same passthrough calling the "
                    "configuration's two models' invoke() once per block, nothing else: about the least a DTLN "
                    "program on this runtime pays")
    ap.add_argument("--threads", action="store_true", help="print each run's CPU per thread (the main "
                    "process's threads alive at the end of the window), busiest first")
    ap.add_argument("--shared", help="the shared folder (models/, audio/, alsa-rig/)")
    a = ap.parse_args(argv)
    rt.sigint_for_children()
    configs = [c for c in a.configs.split(",") if c]
    if not configs or any(c not in CONFIGS for c in configs):
        ap.error(f"--configs: choose from {', '.join(CONFIGS)}")
    if a.runs < 1 or a.seconds < 2 * rt.WINDOW / rt.RATE or a.warmup < 0:
        ap.error("--runs must be >= 1, --seconds >= 4 (two delay windows), --warmup >= 0")
    shared = rt.shared_dir(a.shared)
    a.models = shared / "models"
    a.work = prepare(a.peer.resolve(), a.models, configs)
    a.peer = a.peer.resolve()
    extra = parse_extra(a.dtlnd_args, configs)
    peer_extra = parse_extra(a.peer_args, configs)
    variants: dict[str, dict[str, list[str]]] = {}
    for v in a.variant:
        name, sep, rest = v.partition(":")
        if not sep or not name or name in ("peer", "dtlnd", *FLOORS):
            ap.error(f"--variant {v!r}: give NAME:ARGS, NAME not peer, dtlnd, {' or '.join(FLOORS)}")
        one, scope = parse_extra([rest], configs), rest.partition(":")[0]
        variants[name] = {c: one[c] for c in configs if scope not in CONFIGS or c == scope}
    report = sys.stderr if a.json == "-" else sys.stdout
    load0 = rt.loadavg()
    print(f"compare_peer: {', '.join(configs)}; load average {load0}", file=report, flush=True)
    rig = rt.start_rig(shared, "peer")
    player = rt.LoopPlayer(rig, rt.source_signal(shared))
    rows: list[dict] = []
    try:
        for c in configs:
            cfg = dict(CONFIGS[c], extra=extra[c], peer_extra=peer_extra[c])
            programs = ([("peer", ()), ("dtlnd", ())] + [("bare", ())] * a.floor + [("invokes", ())] * a.invoke_floor
                        + [(n, tuple(v[c])) for n, v in variants.items() if c in v])
            for i in range(a.runs):
                for name, flags in programs:
                    wait_clients_gone(rig)
                    r = run_one(name if name == "peer" or name in FLOORS else "dtlnd", cfg, rig, a, flags)
                    r.update(config=c, run=i + 1, program=name)
                    rows.append(r)
                    print(f"{c} run {i + 1} {name:5}: cpu {r['cpu_s_per_s']:.3f} s/s, rss {r['rss_mb']:.1f} MB, "
                          f"pss {r['pss_mb']:.1f} MB, delay {r['delay_ms']:.1f} ms, xruns {r['xruns']}, dropouts "
                          f"{r['probe']['dropouts']}, steps {r['probe']['delay_steps']}, exit {r['exit']}",
                          file=report, flush=True)
                    if a.threads:
                        print("    threads, CPU s/s: " + ", ".join(f"{n} {v:.3f}" for n, v in r["threads"] if v > 0),
                              file=report, flush=True)
    finally:
        player.stop()
        rig.stop()
    results = {c: {k: medians([r for r in rows if r["config"] == c and r["program"] == k])
                   for k in dict.fromkeys(r["program"] for r in rows if r["config"] == c)} for c in configs}
    load1 = rt.loadavg()
    print("\n" + table(results, a.runs, a.seconds), file=report)
    print(f"\nload average: {load0} at the start, {load1} at the end (2 vCPUs shared with other jobs)", file=report)
    if a.json:
        doc = json.dumps({"results": results, "runs": rows, "load_average": [load0, load1],
                          "seconds": a.seconds, "warmup": a.warmup}, indent=1)
        if a.json == "-":
            print(doc)
        else:
            Path(a.json).write_text(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dtlnd evaluate``: how good the enhancement is, on the user's own recordings.

Each input goes through the engine exactly as ``dtlnd process`` sends it
(`offline.load_signals`, then `offline.enhance`), and the input and every
model's output are scored side by side (see `dtlnd.metrics`).  The scoring
packages are the ``eval`` extra; they are imported only here and only after
`require_extra` has checked them, so ``run`` and ``process`` never load them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import metrics
from .constants import DEFAULT_MODELS, FFT_BACKENDS, RATE
from .errors import DtlndError, ExtraMissing, InputError, UsageError

if TYPE_CHECKING:  # the file code (soundfile, soxr) loads when a command runs, not with the parser
    from . import offline

log = logging.getLogger("dtlnd")

#: import name -> the distribution ``pip install 'dtlnd[eval]'`` brings it with.
EXTRA_MODULES = {"speechmos": "speechmos", "onnxruntime": "onnxruntime", "librosa": "librosa",
                 "requests": "requests", "pesq": "pesq", "pystoi": "pystoi", "matplotlib": "matplotlib"}
#: A --clean file must correlate at least this well with IN (after alignment) to be its clean version.
CLEAN_MIN_CORRELATION = 0.3
#: The shortest input evaluate scores, s.
MIN_SECONDS = 1
#: How far --clean may be shifted against IN, s.
CLEAN_MAX_LAG_S = 1.0
#: Metric keys in table order, with their column headings and number formats.
COLUMNS = {"dnsmos_sig": ("SIG", "{:.2f}"), "dnsmos_bak": ("BAK", "{:.2f}"), "dnsmos_ovrl": ("OVRL", "{:.2f}"),
           "aecmos_echo": ("AEC echo", "{:.2f}"), "aecmos_deg": ("AEC deg", "{:.2f}"),
           "erle_db": ("ERLE dB", "{:.1f}"), "si_sdr_db": ("SI-SDR dB", "{:.1f}"),
           "pesq": ("PESQ-WB", "{:.2f}"), "stoi": ("STOI", "{:.3f}")}


def require_extra() -> None:
    """Exit 69 with one line when a package of the ``eval`` extra is missing."""
    missing = [dist for mod, dist in EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ExtraMissing(f"dtlnd evaluate needs the 'eval' extra ({', '.join(missing)} not installed): "
                                "pip install 'dtlnd[eval]'")


@dataclass
class Recording:
    """One input file's signals at 16 kHz, aligned, and what the scores need to know about it."""

    path: Path
    mic: np.ndarray
    far: Optional[np.ndarray]
    clean: Optional[np.ndarray]
    talk: Optional[str] = None
    far_only: Optional[np.ndarray] = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Engine:
    """A built processor and how the tables name it."""

    label: str
    processor: Any


def align_clean(clean: np.ndarray, mic: np.ndarray, name: str) -> np.ndarray:
    """``clean`` shifted and cut or padded to line up with ``mic``, or a one-line InputError.

    The shift is the cross-correlation peak within ±1 s; a weak peak means
    the file is not the clean version of this recording.
    """
    lag, peak = metrics.best_lag(mic, clean, int(CLEAN_MAX_LAG_S * RATE))
    if peak < CLEAN_MIN_CORRELATION:
        raise InputError(f"--clean {name} does not match the input (correlation {peak:.2f} at best, "
                         f"{CLEAN_MIN_CORRELATION} needed): give the clean version of this recording")
    if lag > 0:
        clean = np.concatenate([np.zeros(lag, np.float32), clean])
    elif lag < 0:
        clean = clean[-lag:]
    if abs(len(clean) - len(mic)) > 0.1 * len(mic):
        raise InputError(f"--clean {name} has {len(clean)} samples after alignment and the input "
                         f"{len(mic)}: more than 10 % apart, so they are not the same recording")
    if lag:
        log.info("%s: aligned with the input by cross-correlation: shifted %+d samples (%+.1f ms)",
                 name, lag, 1000.0 * lag / RATE)
    if len(clean) != len(mic):
        log.info("%s: %d samples against the input's %d after alignment: %s", name, len(clean), len(mic),
                 "zero-padded" if len(clean) < len(mic) else "cut")
    out = np.zeros(len(mic), np.float32)
    out[: min(len(mic), len(clean))] = clean[: len(mic)]
    return out


def load(src: Path, opts: offline.FileOptions, need_far: bool, clean: Optional[Path],
         talk: str) -> Recording:
    """Read ``src`` (and its clean version) the way ``process`` reads its input."""
    from . import offline

    mic, far, _ = offline.load_signals(src, opts, need_far)
    if len(mic) < MIN_SECONDS * RATE:
        raise InputError(f"{src}: {len(mic) / RATE:.2f} s of audio: evaluate needs at least {MIN_SECONDS} s "
                         "(the MOS models score whole seconds)")
    if not np.any(mic):
        raise InputError(f"{src}: the microphone signal is digital silence: nothing to score")
    clean_sig = None
    if clean is not None:
        if not clean.is_file():
            raise InputError(f"{clean}: no such file: check the --clean path")
        clean_sig, _, _ = offline.load_signals(clean, offline.FileOptions(), False)
        clean_sig = align_clean(clean_sig, mic, clean.name)
    rec = Recording(src, mic, far, clean_sig)
    if far is not None:
        rec.talk = metrics.detect_talk_type(mic, far, clean_sig) if talk == "auto" else talk
        rec.far_only = metrics.far_only_frames(mic, far, rec.talk, clean_sig)
        how = " (detected from the levels" + (" of --clean)" if clean_sig is not None else ")")
        log.info("%s: talk type %s%s", src.name, rec.talk, how if talk == "auto" else "")
    return rec


def score(rec: Recording, x: np.ndarray, is_output: bool) -> dict[str, float]:
    """Every metric that applies to ``x`` (the input itself or an output) of ``rec``."""
    s: dict[str, Any] = metrics.dnsmos(x)
    if rec.far is not None and rec.talk is not None:
        s.update(metrics.aecmos(rec.far, rec.mic, x, rec.talk))
        if is_output and rec.far_only is not None and rec.far_only.any():
            s["erle_db"] = metrics.erle_db(rec.mic, x, rec.far_only)
    if rec.clean is not None:
        s["si_sdr_db"] = metrics.si_sdr_db(x, rec.clean)
        p = metrics.pesq_wb(rec.clean, x)
        if p is not None:
            s["pesq"] = p
        s["stoi"] = metrics.stoi(rec.clean, x)
    return {k: round(float(v), 4) for k, v in s.items()}


def build_engines(args: argparse.Namespace) -> list[Engine]:
    """One processor per --model, each built by the function ``process`` builds its own with."""
    from .cli import build_processor, settings_from_flags

    limit = args.set__max_suppression
    mode, ns_model = args.set__mode, args.set__ns_model
    engines = []
    for name in args.models or [None]:
        args.set__model = name
        proc = build_processor(args, settings_from_flags(args))
        first = name or DEFAULT_MODELS["ns" if mode == "ns" else "aec"]
        label = first if mode != "aec+ns" else f"{first}+{ns_model or DEFAULT_MODELS['ns']}"
        if limit is not None:
            label += f" (max {limit:g} dB)"
        engines.append(Engine(label, proc))
    return engines


def enhance_like_process(src: Path, proc: Any, opts: offline.FileOptions, tmp: Path) -> np.ndarray:
    """The output ``dtlnd process`` writes for ``src``, as float32 (written to ``tmp`` and read back).

    Going through `offline.process_file` itself keeps evaluate on exactly
    the path of process, whatever that path does (reference alignment,
    resampling, the suppression limit).
    """
    import soundfile as sf

    from . import offline

    out = tmp / "out.wav"
    offline.process_file(src, out, proc, dataclasses.replace(opts, subtype="FLOAT"))
    y, _ = sf.read(str(out), dtype="float32")
    out.unlink()
    return y


def evaluate_file(src: Path, engines: list[Engine], args: argparse.Namespace, opts: offline.FileOptions,
                  clean: Optional[Path]) -> list[dict[str, Any]]:
    """Rows (the JSON objects) for one file: its input scores and each engine's output scores."""
    rec = load(src, opts, engines[0].processor.channels == 2, clean, args.talk)
    inp = score(rec, rec.mic, is_output=False)
    rows = []
    for eng in engines:
        with tempfile.TemporaryDirectory(prefix="dtlnd-evaluate-") as tmp:
            y = enhance_like_process(src, eng.processor, opts, Path(tmp))
        if len(y) != len(rec.mic):
            raise InputError(f"{src.name}: process wrote {len(y)} samples for {len(rec.mic)} input samples")
        rec.outputs[eng.label] = y
        row: dict[str, Any] = {"file": str(src), "model": eng.label, "mode": args.set__mode}
        if rec.talk is not None:
            row["talk"] = rec.talk
        row["input"] = inp
        row["output"] = score(rec, y, is_output=True)
        rows.append(row)
    if args.plot is not None:
        from . import plots

        plots.save_evaluation(args.plot, rec.path.name, rec.mic, rec.far, rec.outputs)
    return rows


def _cell(values: dict[str, float], key: str) -> str:
    return COLUMNS[key][1].format(values[key]) if key in values else "–"


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: per file the input row, then one row per model; means when there are several files."""
    keys = [k for k in COLUMNS if any(k in r["input"] or k in r["output"] for r in rows)]
    lines = [["file", "signal", *[COLUMNS[k][0] for k in keys]]]
    seen: set[str] = set()
    for r in rows:
        if r["file"] not in seen:
            seen.add(r["file"])
            lines.append([Path(r["file"]).name, "input" + (f" ({r['talk']})" if "talk" in r else ""),
                          *[_cell(r["input"], k) for k in keys]])
        lines.append(["", r["model"], *[_cell(r["output"], k) for k in keys]])
    if len(seen) > 1:
        groups: dict[str, list[dict[str, float]]] = {"input": [r["input"] for r in rows if r is _first(rows, r)]}
        for r in rows:
            groups.setdefault(r["model"], []).append(r["output"])
        for i, (label, vals) in enumerate(groups.items()):
            means = {k: float(np.mean([v[k] for v in vals if k in v])) for k in keys if any(k in v for v in vals)}
            lines.append([f"mean of {len(seen)}" if i == 0 else "", label, *[_cell(means, k) for k in keys]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _first(rows: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """The first row of ``r``'s file (its input scores are the same in all of that file's rows)."""
    return next(x for x in rows if x["file"] == r["file"])


def _inputs(args: argparse.Namespace) -> list[tuple[Path, Optional[Path]]]:
    """(input file, its --clean file) pairs: one for a file, one per WAV below a folder."""
    from . import offline

    src: Path = args.input
    if not src.exists():
        raise InputError(f"{src}: no such file or folder: check the input path")
    if not src.is_dir():
        return [(src, args.clean)]
    if args.plot is not None:
        raise UsageError("--plot draws one recording: give a file as IN, not a folder")
    if args.ref is not None:
        raise UsageError("--ref takes one file: for a folder, put the reference into a channel of each input")
    if args.clean is not None and not args.clean.is_dir():
        raise UsageError(f"--clean {args.clean}: IN is a folder, so --clean must be a folder of the same tree")
    files = offline.audio_files(src)
    if not files:
        raise InputError(f"{src}: no .wav files in this folder")
    return [(f, None if args.clean is None else args.clean / f.relative_to(src)) for f in files]


def run(args: argparse.Namespace) -> int:
    """The ``evaluate`` command: check everything cheap first, then process and score."""
    from . import offline

    require_extra()
    if args.plot is not None:
        from . import plots

        plots.check_writable(args.plot)
    if args.set__mode == "ns" and (args.ref is not None or args.talk != "auto"):
        raise UsageError(f"{'--ref' if args.ref is not None else '--talk'} is only used by --mode aec or aec+ns")
    pairs = _inputs(args)
    engines = build_engines(args)
    from .cli import settings_from_flags

    settings = settings_from_flags(args)  # the same settings, from the same flags, as process
    opts = offline.FileOptions(channel=args.channel, ref=args.ref, ref_channel=args.ref_channel,
                               ref_delay=settings.ref_delay)
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    failed: list[DtlndError] = []
    # disable=None: no bar when stderr is not a terminal.
    bar = tqdm(pairs, unit="file", disable=None if len(pairs) > 1 and not args.no_progress else True, leave=False)
    for src, clean in bar:
        bar.set_postfix_str(src.name, refresh=False)
        try:
            new = evaluate_file(src, engines, args, opts, clean)
        except DtlndError as exc:
            if len(pairs) == 1:
                raise
            failed.append(exc)
            bar.write(f"dtlnd: error: {exc}", file=sys.stderr)
            continue
        rows.extend(new)
        if args.json:
            for r in new:
                print(json.dumps(r), flush=True)
    bar.close()
    if not args.json and rows:
        print(table(rows))
    return failed[0].exit_status if failed else 0


def add_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand: the engine settings' flags exactly as ``process`` has them, --model repeatable."""
    from .cli import add_setting_flags

    p = sub.add_parser("evaluate", help="score the enhancement: DNSMOS, AECMOS, ERLE, SI-SDR, PESQ, STOI",
                       description="Process IN through the same engine as 'process' and score the input and "
                       "each model's output side by side: DNSMOS P.835 always; AECMOS and ERLE for echo "
                       "cancellation; SI-SDR, PESQ-WB and STOI against --clean. Needs pip install 'dtlnd[eval]'.",
                       conflict_handler="resolve")
    p.add_argument("input", type=Path, metavar="IN", help="input WAV file, or a folder of them")
    add_setting_flags(p, run=False)
    p.add_argument("--model", action="append", dest="models", metavar="NAME",  # replaces the settings' --model
                   help="pair to evaluate; repeat for a comparison table (default: the mode's default pair)")
    p.add_argument("--fft", default="auto", choices=FFT_BACKENDS, help="FFT backend (default: pyfftw when installed)")
    p.add_argument("--ref", type=Path, metavar="REF.wav", help="far-end reference for aec (default: a channel of IN)")
    p.add_argument("--clean", type=Path, metavar="CLEAN.wav",
                   help="the clean near-end speech of IN (a folder of the same tree when IN is a folder); "
                        "aligned to IN by cross-correlation")
    p.add_argument("--channel", type=int, default=0, metavar="N", help="microphone channel of IN (default: 0)")
    p.add_argument("--ref-channel", type=int, metavar="N",
                   help="reference channel of IN or REF.wav (default: the last)")
    p.add_argument("--talk", choices=["auto", *metrics.TALK_TYPES], default="auto",
                   help="AECMOS talk type: st far-end single talk, nst near-end single talk, dt double talk; "
                        "auto: detected from the levels (default)")
    p.add_argument("--json", action="store_true", help="one JSON object per line per (file, model) instead of a table")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="write spectrograms of input, reference and output(s) and their levels (one file IN)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    p.set_defaults(func=run)

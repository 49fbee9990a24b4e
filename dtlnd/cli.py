"""The ``dtlnd`` command line: parse, dispatch, turn errors into one line.

Exit statuses: 0 success; 1 a check failed (``bench`` found nothing to run,
``models verify`` found a bad file); 64 bad command line; 65 bad input file;
69 audio device unavailable; 73 output not writable; 78 bad configuration
or model; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import DtlndError, UsageError

log = logging.getLogger("dtlnd")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit status 64."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
        self.exit(UsageError.exit_status, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_model_options(p: argparse.ArgumentParser, default_mode: Optional[str] = "ns") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--mode", choices=["ns", "aec", "aec+ns"], default=default_mode,
                   help="ns: noise suppression; aec: echo cancellation with a far-end reference; "
                        "aec+ns: both, in that order (default: %(default)s)")
    g.add_argument("--model", metavar="NAME",
                   help="model pair NAME (files NAME_1.tflite, NAME_2.tflite); default dtln_ns_quant "
                        "for ns, dtln_aec_128_quant for aec and aec+ns")
    g.add_argument("--ns-model", metavar="NAME", help="the noise-suppression pair of aec+ns (default dtln_ns_quant)")
    g.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="folder holding the model files (default: $DTLND_MODEL_DIR, else "
                        "~/.local/share/dtlnd/models, then /var/lib/dtlnd/models)")
    g.add_argument("--runtime", default="auto", choices=["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"],
                   help="TF-Lite runtime (default: %(default)s = the first that imports, in this order)")
    g.add_argument("--threads", type=int, default=1, metavar="N",
                   help="interpreter threads per model (default: %(default)s)")
    g.add_argument("--fft", default="auto", choices=["auto", "pyfftw", "numpy"],
                   help="FFT backend (default: pyfftw when installed)")


def _build_processor(args: argparse.Namespace):
    from . import engine

    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be 1 or more")
    return engine.build(args.mode, args.model, args.ns_model, args.model_dir, args.runtime,
                        args.threads, args.fft)


def _cmd_process(args: argparse.Namespace) -> int:
    from . import offline

    opts = offline.FileOptions(channel=args.channel, ref=args.ref, ref_channel=args.ref_channel,
                               subtype=args.subtype)
    src: Path = args.input
    if not src.exists():
        raise offline.InputError(f"{src}: no such file or folder: check the input path")
    if args.ref is not None and args.mode == "ns":
        raise UsageError("--ref is only used by --mode aec or aec+ns")
    processor = _build_processor(args)
    if src.is_dir():
        return offline.process_tree(src, args.output, processor, opts, progress=not args.no_progress)
    if args.output.is_dir():
        raise UsageError(f"{args.output}: is a folder; give an output file name (IN is a single file)")
    offline.process_file(src, args.output, processor, opts)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.blocks < 100:
        raise UsageError(f"--blocks {args.blocks}: use at least 100 for meaningful figures")
    return bench.run(args.model, args.model_dir, args.runtime, args.audio, args.ref, args.blocks,
                     args.threads, args.fft, args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dtlnd", description="Real-time DTLN noise suppression and echo cancellation "
                     "for embedded Linux.")
    parser.add_argument("--version", action="version", version=f"dtlnd {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="what to log (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("process", help="enhance WAV files offline through the real-time engine",
                       description="Enhance IN into OUT with the same engine the daemon runs. The output is "
                       "16 kHz, as long as the input and time-aligned with it. IN may be a folder: every "
                       ".wav below it is processed into the same tree under OUT.")
    p.add_argument("input", type=Path, metavar="IN", help="input WAV file, or a folder of them")
    p.add_argument("output", type=Path, metavar="OUT", help="output WAV file, or folder when IN is one")
    _add_model_options(p)
    p.add_argument("--ref", type=Path, metavar="REF.wav",
                   help="far-end reference for aec (default: a channel of IN, see --ref-channel)")
    p.add_argument("--channel", type=int, default=0, metavar="N", help="microphone channel of IN (default: 0)")
    p.add_argument("--ref-channel", type=int, metavar="N",
                   help="reference channel of IN, or of REF.wav (default: the last)")
    p.add_argument("--subtype", metavar="SUBTYPE",
                   help="output sample format, e.g. PCM_16, PCM_24, FLOAT (default: the input's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for folders")
    p.set_defaults(func=_cmd_process)

    p = sub.add_parser("bench", help="time the engine per block against the bare invoke() floor",
                       description="For each model pair found and each TF-Lite runtime installed: the engine's "
                       "wall time per 8 ms block (mean, median, p99), the two invoke() calls alone "
                       "(the floor), and the ratio engine/floor.")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="pair to time (repeatable; default: every pair found)")
    p.add_argument("--model-dir", type=Path, metavar="DIR", help="folder holding the model files")
    p.add_argument("--runtime", action="append", choices=["ai-edge-litert", "tflite-runtime", "tensorflow"],
                   help="runtime to time (repeatable; default: every one installed)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="interpreter threads (default: 1)")
    p.add_argument("--fft", default="auto", choices=["auto", "pyfftw", "numpy"], help="FFT backend")
    p.add_argument("--audio", type=Path, metavar="WAV", help="input audio (default: synthetic noise)")
    p.add_argument("--ref", type=Path, metavar="WAV", help="far-end audio for AEC pairs "
                   "(default: the input, delayed and attenuated)")
    p.add_argument("--blocks", type=int, default=3000, help="blocks timed per pair (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_bench)

    from . import modelstore

    modelstore.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="dtlnd: %(message)s", stream=sys.stderr)
    if args.command is None:
        parser.print_help()
        return UsageError.exit_status
    try:
        return int(args.func(args) or 0)
    except DtlndError as exc:
        print(f"dtlnd: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130

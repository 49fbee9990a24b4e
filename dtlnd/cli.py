"""The ``dtlnd`` command line: parse, dispatch, turn errors into one line.

Exit statuses: 0 success; 1 a check failed (``bench`` found nothing to run,
``models verify`` found a bad file); 64 bad command line; 65 bad input file;
69 audio device unavailable; 73 output not writable; 78 bad configuration
or model; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from . import __version__
from .errors import DtlndError, UsageError

log = logging.getLogger("dtlnd")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit status 64."""

    def error(self, message: str) -> NoReturn:
        self.exit(UsageError.exit_status, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _add_model_options(p: argparse.ArgumentParser, run: bool = False) -> None:
    """Model options; for ``run`` they default to None so the config file's values stand."""
    g = p.add_argument_group("model")
    g.add_argument("--mode", choices=["ns", "aec", "aec+ns"], default=None if run else "ns",
                   help="ns: noise suppression; aec: echo cancellation with a far-end reference; "
                        "aec+ns: both, in that order (default: ns)")
    g.add_argument("--model", metavar="NAME",
                   help="model pair NAME (files NAME_1.tflite, NAME_2.tflite); default dtln_ns_quant "
                        "for ns, dtln_aec_128_quant for aec and aec+ns")
    g.add_argument("--ns-model", metavar="NAME", help="the noise-suppression pair of aec+ns (default dtln_ns_quant)")
    g.add_argument("--model-dir", type=Path, metavar="DIR",
                   help="folder holding the model files (default: $DTLND_MODEL_DIR, else "
                        "~/.local/share/dtlnd/models, then /var/lib/dtlnd/models)")
    g.add_argument("--runtime", default=None if run else "auto",
                   choices=["auto", "ai-edge-litert", "tflite-runtime", "tensorflow"],
                   help="TF-Lite runtime (default: auto = the first that imports, in this order)")
    g.add_argument("--threads", type=int, default=None if run else 1, metavar="N",
                   help="interpreter threads per model (default: 1)")
    if not run:
        g.add_argument("--fft", default="auto", choices=["auto", "pyfftw", "numpy"],
                       help="FFT backend (default: pyfftw when installed)")


def _add_ref_delay_option(p: argparse._ActionsContainer, run: bool = False) -> None:
    p.add_argument("--ref-delay", metavar="auto|MS", default=None if run else "auto",
                   help="aec: delay of the far-end reference in ms (negative: delay the microphone; 0: as it "
                        "comes), or auto: measure the echo's lag and align continuously (default: auto)")


def _ref_delay(args: argparse.Namespace):
    """``--ref-delay`` checked as the config file's ``ref_delay`` is (exit 78 when wrong)."""
    from . import config

    return config.check_alignment(args.ref_delay, config.Settings.ref_delay_max, config.Settings.ref_lead)[0]


def _build_processor(args: argparse.Namespace):
    from . import engine

    if args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be 1 or more")
    return engine.build(args.mode, args.model, args.ns_model, args.model_dir, args.runtime,
                        args.threads, args.fft)


def _cmd_process(args: argparse.Namespace) -> int:
    from . import offline

    opts = offline.FileOptions(channel=args.channel, ref=args.ref, ref_channel=args.ref_channel,
                               subtype=args.subtype, ref_delay=_ref_delay(args))
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
                     args.threads, args.fft, args.json, ref_delay=_ref_delay(args))


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file (default: /etc/dtlnd/dtlnd.yaml if it exists); options below override it")
    p.add_argument("--measure", action="store_true",
                   help="print engine time, xruns, deadline misses and latency once a second, and a summary; "
                        "exit 1 if any xrun, deadline miss or loss of audio occurred")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--log-level", dest="run_log_level", choices=["debug", "info", "warning", "error"],
                   help="what to log (default: info, or log_level from the config file)")
    _add_model_options(p, run=True)
    g = p.add_argument_group("audio devices")
    g.add_argument("--input", metavar="DEV", help="capture device: index, name, or ALSA name such as hw:1,0 "
                   "(default: default)")
    g.add_argument("--input-channels", type=int, metavar="N",
                   help="channels to capture (default: 1 for ns, 2 for aec)")
    g.add_argument("--channel", type=int, metavar="N", help="microphone channel (default: 0)")
    g.add_argument("--ref-channel", type=int, metavar="N", help="far-end reference channel (default: the last)")
    g.add_argument("--input-rate", type=int, metavar="HZ", help="capture rate (default: 16000 if possible, "
                   "else the device's own, resampled)")
    g.add_argument("--output", metavar="DEV", help="playback device (default: hw:Loopback,0)")
    g.add_argument("--output-channels", type=int, metavar="N", help="playback channels (default: 1)")
    g.add_argument("--output-format", choices=["S16_LE", "S32_LE", "FLOAT_LE"],
                   help="playback sample format (default: S16_LE)")
    g.add_argument("--output-rate", type=int, metavar="HZ", help="playback rate (default: 16000 if possible)")
    g.add_argument("--latency", metavar="low|high|SECONDS", help="PortAudio latency per stream (default: 0.008)")
    g.add_argument("--buffer-blocks", type=int, metavar="N",
                   help="8 ms blocks buffered between input and output clocks (default: 2)")
    g.add_argument("--rt-priority", type=int, metavar="N", help="SCHED_FIFO priority for the audio threads, "
                   "0 for none (default: 20)")
    g = p.add_argument_group("echo reference alignment (aec, aec+ns)")
    _add_ref_delay_option(g, run=True)
    g.add_argument("--ref-delay-max", metavar="MS",
                   help="longest echo lag behind the reference that auto searches for (default: 1000)")
    g.add_argument("--ref-lead", metavar="MS",
                   help="how far auto makes the reference lead the echo (default: 40)")


_RUN_OVERRIDES = {
    "mode": "mode", "model": "model", "ns_model": "ns_model", "model_dir": "model_dir", "runtime": "runtime",
    "threads": "threads", "input": "input.device", "input_channels": "input.channels", "channel": "input.channel",
    "ref_channel": "input.ref_channel", "input_rate": "input.rate", "output": "output.device",
    "output_channels": "output.channels", "output_format": "output.format", "output_rate": "output.rate",
    "latency": "latency", "buffer_blocks": "buffer_blocks", "rt_priority": "rt_priority", "run_log_level": "log_level",
    "ref_delay": "ref_delay", "ref_delay_max": "ref_delay_max", "ref_lead": "ref_lead",
}


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    for attr, key in _RUN_OVERRIDES.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from . import service

    overrides = _overrides(args)
    if args.log_level and "log_level" not in overrides:
        overrides["log_level"] = args.log_level
    return service.run(args.config, overrides, args.measure, args.duration)


def _cmd_devices(args: argparse.Namespace) -> int:
    from . import devices

    print(devices.describe())
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from . import config

    settings = config.load(args.file)
    print(f"# {args.file or 'defaults (no file)'}: valid; effective settings:")
    print(yaml.safe_dump(config.as_dict(settings), sort_keys=False).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dtlnd", description="Real-time DTLN noise suppression and echo cancellation "
                     "for embedded Linux.")
    parser.add_argument("--version", action="version", version=f"dtlnd {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="what to log (default: info, or log_level from the config file)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run the daemon: microphone -> model -> loopback (the default command)",
                       description="Read the microphone (and for echo cancellation the far-end reference), "
                       "enhance every 8 ms block and write the result to the loopback device. Settings come "
                       "from the config file; every option here overrides it.")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("devices", help="list audio devices, their channels and whether they open at 16 kHz",
                       description="List the devices PortAudio sees, with channel counts and whether each "
                       "opens at 16 kHz. Use an index, a name, or an ALSA name such as hw:Loopback,0.")
    p.set_defaults(func=_cmd_devices)

    p = sub.add_parser("config", help="check a configuration file",
                       description="Configuration file tools.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser, required=True)
    c = csub.add_parser("check", help="validate a config file and print the effective settings",
                        description="Validate FILE (default /etc/dtlnd/dtlnd.yaml, or defaults when it does "
                        "not exist) and print the effective settings.")
    c.add_argument("file", nargs="?", type=Path, metavar="FILE")
    c.set_defaults(func=_cmd_config_check)

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
    _add_ref_delay_option(p)
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
    _add_ref_delay_option(p)
    p.set_defaults(func=_cmd_bench)

    from . import modelstore

    modelstore.add_parser(sub)
    return parser


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the priority from the prefix."""

    PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelname, 6)}>{record.getMessage()}"


def _setup_logging(level: Optional[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("dtlnd: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or "info").upper())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command is None:
        args = parser.parse_args(["run", *(["--log-level", args.log_level] if args.log_level else [])])
    try:
        return int(args.func(args) or 0)
    except DtlndError as exc:
        print(f"dtlnd: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130

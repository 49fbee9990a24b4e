"""The ``dtlnd`` command line: parse, dispatch, turn errors into one line.

Exit statuses: 0 success; 1 a check failed (``bench`` found nothing to run,
``models verify`` found a bad file); 64 bad command line; 65 bad input file;
69 audio device or optional extra unavailable; 73 output not writable; 78 bad configuration
or model; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Optional, Sequence

from . import __version__, config
from .constants import FFT_BACKENDS, LOG_LEVELS, RUNTIMES
from .errors import ConfigError, DtlndError, UsageError

log = logging.getLogger("dtlnd")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit status 64."""

    def error(self, message: str) -> NoReturn:
        self.exit(UsageError.exit_status, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _flag_type(key: config.Key) -> Any:
    base = key.base
    if base == {int}:
        return int
    if base == {float}:
        return float
    if base == {Path}:
        return Path
    return str


def _add_settings(p: argparse.ArgumentParser, *, run: bool) -> None:
    """The settings' own flags (`dtlnd.config`): all of them on ``run``, the engine's elsewhere.

    On ``run`` they default to None, so the config file's values stand
    unless a flag is given; elsewhere the setting's default is the flag's.
    """
    groups: dict[bool, Any] = {}
    for key in config.schema():
        if not key.flag or not (run or key.process):
            continue
        if key.process not in groups:
            title = "model and engine" if key.process else "audio devices and daemon"
            groups[key.process] = p.add_argument_group(title)
        choices = key.choices if key.base == {str} else None
        shown = "" if key.default is None else f" (default: {key.default})"  # the doc says what empty means
        groups[key.process].add_argument(
            key.flag, dest=_dest(key), type=_flag_type(key), choices=choices, metavar=key.metavar,
            default=None if run else key.default, help=key.doc + shown)


def _dest(key: config.Key) -> str:
    return "set__" + key.name.replace(".", "__")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, as dotted keys."""
    out: dict[str, Any] = {}
    for key in config.schema():
        value = getattr(args, _dest(key), None)
        if value is not None:
            out[key.name] = str(value) if isinstance(value, Path) else value
    return out


def _build_processor(args: argparse.Namespace) -> Any:
    from . import engine

    try:
        s = config.from_options(_overrides(args))
    except ConfigError as exc:  # the values came from flags: name the flags
        flags = {k.name: k.flag for k in config.schema() if k.flag}
        lines = []
        for line in str(exc).splitlines():
            key, _, rest = line.partition(": ")
            lines.append(f"{flags[key]} {rest}" if key in flags else line)
        raise UsageError("\n".join(lines)) from None
    return engine.build(s.mode, s.model, s.ns_model, s.model_dir, s.runtime, s.threads, args.fft)


def _cmd_process(args: argparse.Namespace) -> int:
    from . import offline

    opts = offline.FileOptions(channel=args.channel, ref=args.ref, ref_channel=args.ref_channel,
                               subtype=args.subtype)
    src: Path = args.input
    if not src.exists():
        raise offline.InputError(f"{src}: no such file or folder: check the input path")
    if args.ref is not None and args.set__mode == "ns":
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file (default: /etc/dtlnd/dtlnd.yaml if it exists); options below override it")
    p.add_argument("--measure", action="store_true",
                   help="print engine time, xruns, deadline misses and latency once a second, and a summary; "
                        "exit 1 if any xrun, deadline miss or loss of audio occurred")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    _add_settings(p, run=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from . import service

    overrides = _overrides(args)
    if args.log_level and "log_level" not in overrides:  # dtlnd --log-level X run
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
    parser.add_argument("--log-level", choices=LOG_LEVELS,
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
    _add_settings(p, run=False)
    p.add_argument("--fft", default="auto", choices=FFT_BACKENDS, help="FFT backend (default: pyfftw when installed)")
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
    p.add_argument("--runtime", action="append", choices=RUNTIMES[1:],
                   help="runtime to time (repeatable; default: every one installed)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="interpreter threads (default: 1)")
    p.add_argument("--fft", default="auto", choices=FFT_BACKENDS, help="FFT backend")
    p.add_argument("--audio", type=Path, metavar="WAV", help="input audio (default: synthetic noise)")
    p.add_argument("--ref", type=Path, metavar="WAV", help="far-end audio for AEC pairs "
                   "(default: the input, delayed and attenuated)")
    p.add_argument("--blocks", type=int, default=3000, help="blocks timed per pair (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_bench)

    from . import evaluate, modelstore

    modelstore.add_parser(sub)
    evaluate.add_parser(sub)
    return parser


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the priority from the prefix."""

    PRIORITY: ClassVar[dict[str, int]] = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

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
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"dtlnd: error: {line}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130

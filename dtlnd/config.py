"""Settings: a declarative schema, parsed and validated once, at start-up.

Each setting is a field of a frozen dataclass, and its metadata (made by
`setting`) holds everything else known about it: the documentation, the
accepted choices or range, the unit and the command-line flag.  The
validation, the ``run`` flags, the mapping of flags onto keys and the
defaults shown in ``--help`` all come from there, so a setting is described
in one place.

The YAML file (default ``/etc/dtlnd/dtlnd.yaml``; a missing default file
means all defaults) is merged with command-line overrides; every mistake in
it is collected and reported at once, one line each, in a `ConfigError`
(unknown keys get the nearest valid name suggested).  Everything past this
module takes a `Settings`, never a dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import yaml

from . import paths
from .constants import FORMATS, LOG_LEVELS, MODES, RUNTIMES, SUPPRESSION_RANGE_DB
from .errors import ConfigError


def setting(default: Any, doc: str, *, flag: Optional[str] = None, metavar: Optional[str] = None,
            choices: Optional[tuple[Any, ...]] = None, bounds: Optional[tuple[float, float]] = None,
            unit: str = "", process: bool = False) -> Any:
    """A dataclass field carrying its own documentation and rules.

    ``choices``: the accepted values (for a number-or-word setting, the
    accepted words); ``bounds``: the inclusive range of a number; ``flag``:
    the ``dtlnd run`` option that overrides it; ``process``: the option is
    also one of ``dtlnd process`` (a setting of the engine, not the devices).
    """
    meta = {"doc": doc, "flag": flag, "metavar": metavar, "choices": choices, "range": bounds, "unit": unit,
            "process": process}
    if is_dataclass(default):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class InputSettings:
    """The capture device: the microphone and, for AEC, the far-end reference."""

    device: Union[str, int] = setting(
        "default", "capture device: index, name, or ALSA name such as hw:1,0", flag="--input", metavar="DEV")
    channels: Optional[int] = setting(
        None, "channels to capture; empty: 1 for ns, 2 for aec", flag="--input-channels", metavar="N",
        bounds=(1, 64))
    channel: int = setting(0, "the microphone channel", flag="--channel", metavar="N")
    ref_channel: Optional[int] = setting(
        None, "the far-end reference channel (aec); empty: the last", flag="--ref-channel", metavar="N")
    rate: Optional[int] = setting(
        None, "capture rate; empty: 16000 if the device can, else its own, resampled", flag="--input-rate",
        metavar="HZ", bounds=(8000, 384000), unit="Hz")


@dataclass(frozen=True)
class OutputSettings:
    """The playback device the enhanced audio goes to (the loopback)."""

    device: Union[str, int] = setting(
        "hw:Loopback,0", "playback device (the loopback consumers record from)", flag="--output", metavar="DEV")
    channels: int = setting(1, "playback channels", flag="--output-channels", metavar="N", bounds=(1, 32))
    format: str = setting("S16_LE", "playback sample format: what consumers of the loopback read",
                          flag="--output-format", choices=tuple(FORMATS))
    rate: Optional[int] = setting(
        None, "playback rate; empty: 16000 if the device can", flag="--output-rate", metavar="HZ",
        bounds=(8000, 384000), unit="Hz")


@dataclass(frozen=True)
class Settings:
    """Everything ``dtlnd run`` needs, as the user configured it."""

    mode: str = setting("ns", "ns: noise suppression; aec: echo cancellation with a far-end reference; "
                        "aec+ns: both, in that order", flag="--mode", choices=MODES, process=True)
    model: Optional[str] = setting(
        None, "model pair of the first stage; empty: dtln_ns_quant for ns, dtln_aec_128_quant otherwise",
        flag="--model", metavar="NAME", process=True)
    ns_model: Optional[str] = setting(None, "the noise-suppression pair of aec+ns; empty: dtln_ns_quant",
                                      flag="--ns-model", metavar="NAME", process=True)
    model_dir: Optional[Path] = setting(
        None, "folder holding the model files; empty: $DTLND_MODEL_DIR, else ~/.local/share/dtlnd/models, "
        "then /var/lib/dtlnd/models", flag="--model-dir", metavar="DIR", process=True)
    runtime: str = setting("auto", "model runtime; auto: for NAME_1.tflite the first TF-Lite runtime that "
                           "imports, in this order; for a pair found only as NAME_1.onnx, onnxruntime",
                           flag="--runtime", choices=RUNTIMES, process=True)
    threads: int = setting(1, "interpreter threads per model", flag="--threads", metavar="N", bounds=(1, 64),
                           process=True)
    input: InputSettings = setting(InputSettings(), "the capture device")
    output: OutputSettings = setting(OutputSettings(), "the playback device")
    latency: Union[str, float] = setting(
        0.008, "PortAudio's suggested latency per stream (playback: push sizes the playback's by buffer_blocks): "
        "seconds, or low / high (PortAudio's choice)",
        flag="--latency", metavar="low|high|SECONDS", choices=("low", "high"), bounds=(0.0005, 1.0),
        unit="seconds")
    clock: str = setting(
        "separate", "separate: two streams joined by a drift-correcting buffer; shared: one duplex stream, for "
        "devices on one clock (the same card, or snd-aloop with timer_source= the capture card); auto: shared "
        "when dtlnd can tell the clocks are one", flag="--clock", metavar="separate|shared|auto",
        choices=("separate", "shared", "auto"))
    playback: str = setting(
        "callback", "clock: separate only.  callback: the playback stream has its own callback thread; push: the "
        "capture callback writes the playback stream (one audio thread: less CPU, 8 ms less delay; the slack is "
        "in the device's buffer, and one-block steps, drift's among them, are resampled away in 0.4 s)",
        flag="--playback", metavar="callback|push", choices=("callback", "push"))
    buffer_blocks: int = setting(2, "8 ms blocks of slack between the capture and playback clocks (push: in the "
                                 "playback device's buffer; callback: in the clock bridge)",
                                 flag="--buffer-blocks", metavar="N", bounds=(1, 64))
    rt_priority: int = setting(20, "SCHED_FIFO priority for the audio threads; 0: do not ask",
                               flag="--rt-priority", metavar="N", bounds=(0, 99))
    log_level: str = setting("info", "what to log", flag="--log-level", choices=LOG_LEVELS)
    ref_delay: Union[str, float] = setting(
        "auto", "aec: delay added to the far-end reference, ms (negative: delay the microphone instead), or "
        "auto: measure the echo's lag and align continuously; 0: the reference as it comes",
        flag="--ref-delay", metavar="auto|MS", choices=("auto",), unit="ms", process=True)
    ref_delay_max: float = setting(1000.0, "longest echo lag behind the reference that auto searches for",
                                   flag="--ref-delay-max", metavar="MS", bounds=(0.0, 2000.0), unit="ms",
                                   process=True)
    ref_lead: float = setting(40.0, "how far auto makes the reference lead the echo (DTLN-aec wants it early)",
                              flag="--ref-lead", metavar="MS", bounds=(0.0, 200.0), unit="ms", process=True)
    max_suppression: Optional[float] = setting(
        None, "the output never falls more than this below the input: the time-aligned input is mixed into "
        "the output at 10^(-DB/20); empty: no limit", flag="--max-suppression", metavar="DB",
        bounds=SUPPRESSION_RANGE_DB, unit="dB", process=True)
    pipeline: Union[bool, str] = setting(
        False, "run model 2 (for aec+ns: the NS stage) on a second thread, 8 ms more latency; auto: when a "
        "paced sequential block takes over half the 8 ms budget (measured at start)", flag="--pipeline",
        metavar="true|false|auto", choices=("auto",), process=True)

    @property
    def input_channels(self) -> int:
        return self.input.channels or (1 if self.mode == "ns" else 2)

    @property
    def ref_channel(self) -> int:
        ch = self.input.ref_channel
        return self.input_channels - 1 if ch is None else ch


# -- the schema, walked ----------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One leaf setting: its dotted name, type and rules (from the field's metadata)."""

    name: str
    type: Any
    default: Any
    doc: str
    flag: Optional[str]
    metavar: Optional[str]
    choices: Optional[tuple[Any, ...]]
    range: Optional[tuple[float, float]]
    unit: str
    process: bool

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def base(self) -> set[Any]:
        """The non-None types the setting accepts."""
        args = typing.get_args(self.type) or (self.type,)
        return {a for a in args if a is not type(None)}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def schema(cls: type = Settings, prefix: str = "") -> Iterator[Key]:
    """Every leaf setting of ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from schema(hints[f.name], f"{prefix}{f.name}.")
            continue
        m = f.metadata
        yield Key(prefix + f.name, hints[f.name], _default(f), m.get("doc", ""), m.get("flag"), m.get("metavar"),
                  m.get("choices"), m.get("range"), m.get("unit", ""), m.get("process", False))


# -- checking one value -----------------------------------------------------------

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(key: Key, value: Any) -> Any:
    """``value`` as the setting's type, or a ConfigError naming the key and the fix."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{key.name}: {what}")

    if value is None:
        if key.optional:
            return None
        raise bad("must not be empty")
    base = key.base
    if Path in base:
        if not isinstance(value, str):
            raise bad(f"expected a path, got {value!r}")
        return Path(value).expanduser()
    if base == {str, int}:  # a device: name or index
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad(f"expected a device name or index, got {value!r}")
        return value
    if base == {str, float}:  # a number, or one of a few words
        words = ", ".join(key.choices or ())
        if isinstance(value, str) and value.strip().lower() in (key.choices or ()):
            return value.strip().lower()
        number = _number(value)
        if number is None:
            raise bad(f"{value!r}: use {words} or a number{f' of {key.unit}' if key.unit else ''}")
        return number
    if bool in base:  # true or false, or one of a few words
        options = tuple(str(c) for c in key.choices or ())
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _BOOL_WORDS:
            return _BOOL_WORDS[text]
        if text in options:
            return text
        raise bad(f"expected true or false{''.join(f' or {w}' for w in options)}, got {value!r}")
    if base == {int}:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(f"expected an integer, got {value!r}")
        return value
    if base == {float}:
        number = _number(value)
        if number is None:
            raise bad(f"expected a number, got {value!r}")
        return number
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(f"expected {_TYPE_NAMES.get(next(iter(base)), 'a value')}, got {value!r}")
    return str(value)


def _check_rules(key: Key, value: Any) -> None:
    """The field's own choices and range."""
    if value is None:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    is_flag = isinstance(value, bool) and bool in key.base
    if key.choices is not None and not is_number and not is_flag and value not in key.choices:
        raise ConfigError(f"{key.name}: {value!r} is not one of {', '.join(map(str, key.choices))}")
    if key.range is not None and is_number:
        lo, hi = key.range
        if not lo <= value <= hi:
            unit = f" {key.unit}" if key.unit else ""
            raise ConfigError(f"{key.name}: {value:g}{unit} is out of range: use {lo:g}..{hi:g}{unit}")


# -- typos ---------------------------------------------------------------------------


def _typos(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``; swapping two neighbours is one (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def _near(name: str, known: Mapping[str, Any]) -> list[str]:
    """The keys ``name`` is a typo of: all those one or two edits away, nearest first.

    difflib alone ranks 'mode' above 'model' for 'modle', so typo distance
    comes first and every key at the smallest distance is offered.
    """
    dist = {k: _typos(name, k) for k in known}
    best = min(dist.values())
    if best <= min(2, len(name) // 2):
        return [k for k in known if dist[k] == best]
    return difflib.get_close_matches(name, known, n=1)


# -- building ---------------------------------------------------------------------------


def _build(cls: type, data: Any, errors: list[str], prefix: str = "") -> Any:
    """``cls`` from ``data``; each problem is appended to ``errors`` and the default kept."""
    if data is None:  # an empty section (all its keys commented out) is an empty section
        data = {}
    if not isinstance(data, Mapping):
        errors.append(f"{prefix.rstrip('.') or 'the file'}: expected a mapping of settings, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    leaves = {k.name: k for k in schema(cls, prefix)}
    kwargs = {}
    for raw_key, value in data.items():
        name = str(raw_key).replace("-", "_")
        if name not in known:
            near = " or ".join(f"'{prefix}{k}'" for k in _near(name, known))
            hint = f"; did you mean {near}?" if near else f"; known keys: {', '.join(known)}"
            errors.append(f"unknown setting '{prefix}{raw_key}'{hint}")
            continue
        if is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, errors, f"{prefix}{name}.")
            continue
        key = leaves[prefix + name]
        try:
            kwargs[name] = _coerce(key, value)
            _check_rules(key, kwargs[name])
        except ConfigError as exc:
            errors.append(str(exc))
            kwargs.pop(name, None)
    return cls(**kwargs)


def _cross_checks(s: Settings) -> Iterator[str]:
    """Rules that tie several settings together."""
    from .align import MIC_DELAY_MAX_MS

    if s.ref_delay != "auto" and not -MIC_DELAY_MAX_MS <= float(s.ref_delay) <= s.ref_delay_max:
        yield (f"ref_delay: {float(s.ref_delay):g} ms is out of range: use -{MIC_DELAY_MAX_MS:g} "
               f"(microphone delayed) to ref_delay_max ({s.ref_delay_max:g} ms), or auto")
    n = s.input_channels
    if not -n <= s.input.channel < n:
        yield (f"input.channel: {s.input.channel} is out of range for {n} input channel"
               f"{'s' if n != 1 else ''} (0..{n - 1}); set input.channels")
    if s.mode != "ns":
        if n < 2:
            yield (f"input.channels: mode {s.mode} needs the far-end reference in a second channel: "
                   "set input.channels to 2 or more")
        elif not -n <= s.ref_channel < n:
            yield f"input.ref_channel: {s.ref_channel} is out of range for {n} input channels (0..{n - 1})"
        elif s.ref_channel % n == s.input.channel % n:
            yield (f"input.ref_channel: the reference and the microphone are both channel "
                   f"{s.input.channel % n}: pick another channel")


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


def _merge(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with dotted-key ``overrides`` applied; a null section counts as an empty one."""
    merged: dict[str, Any] = dict(data)
    for dotted, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node: Optional[dict[str, Any]] = merged
        for p in parents:
            child = node.get(p) if node is not None else None
            if child is not None and not isinstance(child, dict):
                node = None  # not a mapping: the file's own error is reported
                break
            if node is not None:
                node[p] = dict(child or {})
                node = node[p]
        if node is not None:
            node[leaf] = value
    return merged


def load(path: Optional[Path] = None, overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Settings from ``path`` (default file if None) with dotted-key ``overrides`` applied.

    Raises one `ConfigError` listing every problem, one per line.
    """
    explicit = path is not None
    path = Path(path) if path is not None else paths.CONFIG_FILE
    found = path.exists()
    data = _read(path) if found or explicit else {}
    return _settings(data, overrides or {}, f"{path}: " if found else "")


def from_options(overrides: Mapping[str, Any]) -> Settings:
    """Settings from command-line values alone, on the defaults (``dtlnd process``: no config file)."""
    return _settings({}, overrides, "")


def _settings(data: dict[str, Any], overrides: Mapping[str, Any], where: str) -> Settings:
    errors: list[str] = []
    settings = _build(Settings, _merge(data, overrides), errors)
    if not errors:
        errors.extend(_cross_checks(settings))
    if errors:
        raise ConfigError("\n".join(where + e for e in errors))
    return settings


def as_dict(s: Any) -> Any:
    """Plain data for printing the effective settings."""
    if is_dataclass(s):
        return {f.name: as_dict(getattr(s, f.name)) for f in fields(s)}
    return str(s) if isinstance(s, Path) else s

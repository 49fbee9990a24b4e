"""Settings: parsed once, at start-up, into frozen dataclasses.

The YAML file (default ``/etc/dtlnd/dtlnd.yaml``; a missing default file
means all defaults) is merged with command-line overrides and validated
here; everything past this module takes a `Settings`, never a dict.  A
mistake is one `ConfigError` naming the key and the fix: unknown keys get
the nearest valid name suggested.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from . import paths
from .constants import FORMATS, LOG_LEVELS, MODES, RUNTIMES
from .errors import ConfigError



@dataclass(frozen=True)
class InputSettings:
    """The capture device: the microphone and, for AEC, the far-end reference."""

    #: sounddevice index or name substring, or an ALSA name (hw:1,0, hw:CARD=X,DEV=0, a PCM)
    device: Union[str, int] = "default"
    #: channels to open; None: 1 for ns, 2 for aec (use the device's count for arrays)
    channels: Optional[int] = None
    #: the microphone channel
    channel: int = 0
    #: the far-end reference channel (AEC); None: the last channel
    ref_channel: Optional[int] = None
    #: rate to open the device at; None: 16000 if it can, else its default rate
    rate: Optional[int] = None


@dataclass(frozen=True)
class OutputSettings:
    """The playback device the enhanced audio goes to (the loopback)."""

    device: Union[str, int] = "hw:Loopback,0"
    channels: int = 1
    #: sample format: what consumers of the loopback will read
    format: str = "S16_LE"
    rate: Optional[int] = None


@dataclass(frozen=True)
class Settings:
    mode: str = "ns"
    #: the first stage's pair (NS for ns, AEC otherwise); None: the mode's default
    model: Optional[str] = None
    #: the NS pair of aec+ns
    ns_model: Optional[str] = None
    model_dir: Optional[Path] = None
    runtime: str = "auto"
    threads: int = 1
    input: InputSettings = field(default_factory=InputSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    #: PortAudio's suggested latency per stream: seconds, or low / high (PortAudio's own choice)
    latency: Union[str, float] = 0.008
    #: blocks of 8 ms held between input and output to absorb jitter
    buffer_blocks: int = 2
    #: real-time (SCHED_FIFO) priority for the audio threads; 0: don't ask
    rt_priority: int = 20
    log_level: str = "info"
    max_suppression: Optional[float] = field(default=None, metadata={
        "doc": "the output never falls more than this below the input: the time-aligned input is mixed "
               "into the output at 10^(-DB/20); none: no limit",
        "flag": "--max-suppression", "range": (0.0, 120.0), "unit": "dB"})
    pipeline: Union[bool, str] = field(default=False, metadata={
        "doc": "run model 2 (for aec+ns: the NS stage) on a second thread, 8 ms more latency; auto: when "
               "a paced sequential block takes over half the 8 ms budget (measured at start)",
        "flag": "--pipeline", "choices": (False, True, "auto")})

    @property
    def input_channels(self) -> int:
        return self.input.channels or (1 if self.mode == "ns" else 2)

    @property
    def ref_channel(self) -> int:
        ch = self.input.ref_channel
        return self.input_channels - 1 if ch is None else ch


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Path: "a path"}.get(tp, str(tp))


def _coerce(key: str, value: Any, default: Any, hint: str) -> Any:
    """Check one scalar against its field's type (from the default's and the annotation)."""
    if value is None:
        if "Optional" in hint or default is None:
            return None
        raise ConfigError(f"{key}: must not be empty")
    if "Path" in hint:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value).expanduser()
    if "Union[str, int]" in hint:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"{key}: expected a device name or index, got {value!r}")
        return value
    if "Union[str, float]" in hint:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        raise ConfigError(f"{key}: expected low, high or seconds, got {value!r}")
    if "Union[bool, str]" in hint:
        if isinstance(value, (bool, str)):
            return value
        raise ConfigError(f"{key}: expected true, false or auto, got {value!r}")
    if "bool" in hint:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if "float" in hint:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if "int" in hint:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if "str" in hint:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


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


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the file'}: expected a mapping of settings, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            near = " or ".join(f"'{prefix}{k}'" for k in _near(name, known))
            hint = f"; did you mean {near}?" if near else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown setting '{prefix}{key}'{hint}")
        f = known[name]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, default, str(f.type))
    return cls(**kwargs)


def _validate(s: Settings) -> Settings:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{key}: {msg}")

    if s.mode not in MODES:
        raise bad("mode", f"{s.mode!r} is not one of {', '.join(MODES)}")
    if s.runtime not in RUNTIMES:
        raise bad("runtime", f"{s.runtime!r} is not one of {', '.join(RUNTIMES)}")
    if s.log_level not in LOG_LEVELS:
        raise bad("log_level", f"{s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if s.threads < 1:
        raise bad("threads", "must be 1 or more")
    if isinstance(s.latency, str) and s.latency not in ("low", "high"):
        raise bad("latency", f"{s.latency!r}: use low, high, or a time in seconds such as 0.016")
    if isinstance(s.latency, float) and not 0 < s.latency <= 1:
        raise bad("latency", f"{s.latency}: use a time in seconds between 0 and 1, e.g. 0.016")
    if not 1 <= s.buffer_blocks <= 64:
        raise bad("buffer_blocks", f"{s.buffer_blocks}: use 1..64 blocks of 8 ms")
    if s.max_suppression is not None and not 0 <= s.max_suppression <= 120:
        raise bad("max_suppression", f"{s.max_suppression}: use 0..120 dB (e.g. 20), or leave it empty for no limit")
    if s.pipeline not in (False, True, "auto"):
        raise bad("pipeline", f"{s.pipeline!r}: use true, false or auto")
    if not 0 <= s.rt_priority <= 99:
        raise bad("rt_priority", f"{s.rt_priority}: use 0 (off) or 1..99")
    if s.output.format not in FORMATS:
        raise bad("output.format", f"{s.output.format!r} is not one of {', '.join(FORMATS)}")
    if not 1 <= s.output.channels <= 32:
        raise bad("output.channels", f"{s.output.channels}: use 1..32")
    if s.input.channels is not None and not 1 <= s.input.channels <= 64:
        raise bad("input.channels", f"{s.input.channels}: use 1..64")
    for key, rate in (("input.rate", s.input.rate), ("output.rate", s.output.rate)):
        if rate is not None and not 8000 <= rate <= 384000:
            raise bad(key, f"{rate}: use a sample rate such as 16000 or 48000")
    n = s.input_channels
    if not -n <= s.input.channel < n:
        raise bad("input.channel", f"{s.input.channel} is out of range for {n} input channel"
                  f"{'s' if n != 1 else ''} (0..{n - 1}); set input.channels")
    if s.mode != "ns":
        if n < 2:
            raise bad("input.channels", f"mode {s.mode} needs the far-end reference in a second channel: "
                      "set input.channels to 2 or more")
        if not -n <= s.ref_channel < n:
            raise bad("input.ref_channel", f"{s.ref_channel} is out of range for {n} input channels (0..{n - 1})")
        if s.ref_channel % n == s.input.channel % n:
            raise bad("input.ref_channel", f"the reference and the microphone are both channel "
                      f"{s.input.channel % n}: pick another channel")
    return s


def load(path: Optional[Path] = None, overrides: Optional[Mapping[str, Any]] = None) -> Settings:
    """Settings from ``path`` (default file if None) with dotted-key ``overrides`` applied."""
    explicit = path is not None
    path = Path(path) if explicit else paths.CONFIG_FILE
    data: Any = {}
    if path.exists() or explicit:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    merged: dict[str, Any] = dict(data)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[leaf] = value
    where = f"{path}: " if path.exists() else ""
    try:
        return _validate(_build(Settings, merged))
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def as_dict(s: Any) -> Any:
    """Plain data for printing the effective settings."""
    if is_dataclass(s):
        return {f.name: as_dict(getattr(s, f.name)) for f in fields(s)}
    return str(s) if isinstance(s, Path) else s

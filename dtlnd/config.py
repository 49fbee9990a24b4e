"""Settings: parsed once, at start-up, into frozen dataclasses.

The YAML file (default ``/etc/dtlnd/dtlnd.yaml``; a missing default file
means all defaults) is merged with command-line overrides and validated
here; everything past this module takes a `Settings`, never a dict.  A
mistake is one `ConfigError` naming the key and the fix: unknown keys get
the nearest valid name suggested.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass, replace
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
    #: echo cancellation: how far to delay the far-end reference (ms), or auto: estimate it continuously
    ref_delay: Union[str, float] = field(default="auto", metadata={
        "doc": "delay added to the far-end reference, ms (negative: delay the microphone instead), "
               "or auto: measure the echo's lag and align continuously; 0: the reference as it comes",
        "flag": "--ref-delay", "unit": "ms"})
    #: the longest echo lag auto searches for, and the longest reference delay
    ref_delay_max: float = field(default=1000.0, metadata={
        "doc": "longest echo lag behind the reference that auto searches for, ms",
        "flag": "--ref-delay-max", "range": (0.0, 2000.0), "unit": "ms"})
    #: how far the aligned reference leads the echo (DTLN-aec wants it a little early)
    ref_lead: float = field(default=40.0, metadata={
        "doc": "how far auto makes the reference lead the echo, ms (measured flat region: 10-100 ms)",
        "flag": "--ref-lead", "range": (0.0, 200.0), "unit": "ms"})

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
    if "bool" in hint:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
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


def _milliseconds(key: str, value: Any) -> float:
    """A number of ms from the file (a number) or the command line (text), within its field's range."""
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        ms = float(value)
    except ValueError:
        raise ConfigError(f"{key}: expected a number of milliseconds, got {value!r}") from None
    lo, hi = next(f.metadata["range"] for f in fields(Settings) if f.name == key)
    if not lo <= ms <= hi:
        raise ConfigError(f"{key}: {ms:g} ms is out of range: use {lo:g} to {hi:g} ms")
    return ms


def check_alignment(ref_delay: Any, ref_delay_max: Any, ref_lead: Any) -> tuple[Union[str, float], float, float]:
    """(``ref_delay``: ``auto`` or ms, ``ref_delay_max``, ``ref_lead``) checked, or a ConfigError naming the bad one."""
    from .align import MIC_DELAY_MAX_MS, parse_ref_delay

    ref_delay_max = _milliseconds("ref_delay_max", ref_delay_max)
    ref_lead = _milliseconds("ref_lead", ref_lead)
    try:
        delay = parse_ref_delay(ref_delay)
    except ValueError:
        raise ConfigError(f"ref_delay: {ref_delay!r} is neither auto nor a number of milliseconds") from None
    if delay != "auto" and not -MIC_DELAY_MAX_MS <= float(delay) <= ref_delay_max:
        raise ConfigError(f"ref_delay: {float(delay):g} ms is out of range: use -{MIC_DELAY_MAX_MS:g} "
                          f"(microphone delayed) to ref_delay_max ({ref_delay_max:g} ms), or auto")
    return delay, ref_delay_max, ref_lead


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
    delay, delay_max, lead = check_alignment(s.ref_delay, s.ref_delay_max, s.ref_lead)
    return replace(s, ref_delay=delay, ref_delay_max=delay_max, ref_lead=lead)


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

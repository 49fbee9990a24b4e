"""``dtlnd process``: files through the same engine the daemon runs.

The output is time-aligned with the input: the engine's fixed delay is
removed (the end is padded so the last input samples come out, and the
first ``delay`` output samples are dropped).  Output goes to a temporary
file beside the target and is renamed into place only when complete, so a
failure never leaves a partial file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
import soxr

from .atomic import atomic_write
from .constants import RATE
from .engine import BlockStream
from .errors import DtlndError, InputError, OutputError, UsageError
from .hop import HopProcessor

_CHUNK = 1 << 16

log = logging.getLogger("dtlnd")


@dataclass(frozen=True)
class FileOptions:
    """How to pick the signals out of the input files."""

    channel: int = 0
    ref: Optional[Path] = None
    ref_channel: Optional[int] = None  # None: the last channel
    subtype: Optional[str] = None  # None: the input's subtype
    ref_delay: Union[str, float] = "auto"  # aec: "auto" or ms (see dtlnd.align)


def _open(path: Path, what: str) -> sf.SoundFile:
    if not path.exists():
        raise InputError(f"{path}: no such file: check the {what} path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an audio file")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        detail = str(exc).split(":")[-1].strip() or "unreadable"
        raise InputError(f"{path}: not a WAV or other audio file libsndfile can read ({detail})") from None
    if f.frames == 0:
        f.close()
        raise InputError(f"{path}: the file holds no audio frames: nothing to process")
    return f


def _channel_index(index: Optional[int], channels: int, path: Path, option: str) -> int:
    if index is None:
        return channels - 1
    if not -channels <= index < channels:
        raise UsageError(f"{option} {index} is out of range: {path.name} has {channels} channel"
                         f"{'s' if channels != 1 else ''} (0..{channels - 1})")
    return index % channels


def _read_channels(f: sf.SoundFile, picks: list[int]) -> list[np.ndarray]:
    """Read whole channels at 16 kHz without holding every channel of a wide file."""
    out = [np.empty(f.frames, np.float32) for _ in picks]
    pos = 0
    for block in f.blocks(blocksize=_CHUNK, dtype="float32", always_2d=True):
        for arr, ch in zip(out, picks):
            arr[pos:pos + len(block)] = block[:, ch]
        pos += len(block)
    if f.samplerate != RATE:
        log.info("%s: resampling %d Hz to %d Hz (soxr)", Path(f.name).name, f.samplerate, RATE)
        out = [soxr.resample(arr, f.samplerate, RATE, quality="HQ").astype(np.float32) for arr in out]
    return out


def load_signals(src: Path, opts: FileOptions, need_far: bool) -> tuple[np.ndarray, Optional[np.ndarray], str]:
    """The microphone (and far-end reference) signals of ``src`` at 16 kHz, and its subtype."""
    f = _open(src, "input")
    subtype = f.subtype
    with f:
        mic_ch = _channel_index(opts.channel, f.channels, src, "--channel")
        if not need_far:
            (mic,) = _read_channels(f, [mic_ch])
            return mic, None, subtype
        if opts.ref is None:
            if f.channels < 2:
                raise UsageError(f"{src.name}: echo cancellation needs a far-end reference: give --ref REF.wav "
                                 "or an input with the reference in another channel")
            ref_ch = _channel_index(opts.ref_channel, f.channels, src, "--ref-channel")
            if ref_ch == mic_ch:
                raise UsageError(f"--channel and --ref-channel both pick channel {mic_ch}: "
                                 "the reference must be another channel")
            mic, far = _read_channels(f, [mic_ch, ref_ch])
        else:
            (mic,) = _read_channels(f, [mic_ch])
            with _open(opts.ref, "--ref") as rf:
                ref_ch = _channel_index(opts.ref_channel, rf.channels, opts.ref, "--ref-channel")
                (far,) = _read_channels(rf, [ref_ch])
    if len(mic) != len(far):
        n = min(len(mic), len(far))
        log.info("%s: microphone has %d samples and reference %d: processing the first %d",
                 src.name, len(mic), len(far), n)
        mic, far = mic[:n], far[:n]
    return mic, far, subtype


_FORMAT_ALIASES = {"aif": "AIFF", "oga": "OGG", "wave": "WAV"}


def output_format(dst: Path) -> str:
    """The libsndfile format the output name's extension asks for; an error when it writes no such files."""
    ext = dst.suffix.lower().lstrip(".")
    fmt = _FORMAT_ALIASES.get(ext, ext.upper())
    if not ext or fmt not in sf.available_formats():
        ours = ", ".join(f".{f.lower()}" for f in ("WAV", "FLAC", "OGG", "MP3") if f in sf.available_formats())
        what = f"libsndfile {sf.__libsndfile_version__} cannot write .{ext} files" if ext else "no extension"
        raise UsageError(f"{dst}: {what}: name the output with one of {ours}")
    return fmt


def summary(what: str, audio_seconds: float, wall_seconds: float) -> str:
    """The one line ``process`` and ``demo`` print: what, how long, and the real-time factor (wall / audio)."""
    rtf = wall_seconds / audio_seconds if audio_seconds > 0 else 0.0
    speed = f" ({1 / rtf:.0f}x faster than real time)" if 0 < rtf < 1 else ""
    return f"{what}: {audio_seconds:.1f} s of audio in {wall_seconds:.2f} s, real-time factor {rtf:.3f}{speed}"


def _output_subtype(dst: Path, in_subtype: str, wanted: Optional[str]) -> tuple[str, str]:
    fmt = output_format(dst)
    subtype = (wanted or in_subtype).upper()
    if subtype not in sf.available_subtypes(fmt):
        if wanted:
            raise UsageError(f"--subtype {wanted}: not a {fmt} subtype; use one of "
                             f"{', '.join(sorted(sf.available_subtypes(fmt)))}")
        subtype = sf.default_subtype(fmt)
    return fmt, subtype


def enhance(stream: BlockStream, mic: np.ndarray, far: Optional[np.ndarray],
            resets: tuple[int, ...] = ()) -> np.ndarray:
    """Run a whole signal through ``stream``, output aligned with the input.

    ``resets``: samples at which the echo canceller's LSTM states are zeroed
    (where the reference alignment changed, as the live path does).
    """
    stream.reset()
    d = stream.delay
    n = len(mic)
    mic = np.concatenate([mic, np.zeros(d, np.float32)])
    if far is not None:
        far = np.concatenate([far, np.zeros(d, np.float32)])
    out = np.empty(n + d, np.float32)
    bounds = sorted(set(range(0, n + d, _CHUNK)) | {r for r in resets if 0 < r < n})
    for pos, end in zip(bounds, [*bounds[1:], n + d]):
        if pos in resets:
            from .delayline import echo_stage

            echo_stage(stream.processor).pair.reset()
        stream.process(mic[pos:end], None if far is None else far[pos:end], out[pos:end])
    return out[d:]


def process_file(src: Path, dst: Path, processor: HopProcessor, opts: FileOptions) -> float:
    """Enhance one file into ``dst`` (written atomically); returns the seconds of audio processed."""
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise UsageError(f"{dst}: output would overwrite the input: choose another output path")
    mic, far, in_subtype = load_signals(src, opts, processor.channels == 2)
    resets: tuple[int, ...] = ()
    fmt, subtype = _output_subtype(dst, in_subtype, opts.subtype)
    if far is not None and opts.ref_delay != 0:
        from .align import align_reference

        aligned = align_reference(mic, far, opts.ref_delay)
        far, resets = aligned.far, aligned.resets
        log.log(aligned.level, "%s: %s", src.name, aligned.text)
    y = enhance(BlockStream(processor), mic, far, resets)
    if subtype.startswith("PCM") or subtype in ("ULAW", "ALAW"):
        np.clip(y, -1.0, 1.0, out=y)
    write_atomic(dst, y, fmt, subtype)
    return len(y) / RATE


def write_atomic(dst: Path, data: np.ndarray, fmt: str, subtype: str) -> None:
    """Write ``dst`` through `dtlnd.atomic`: never half-written, the modes a plain ``open`` would give."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dst) as fh:
            sf.write(fh, data, RATE, subtype=subtype, format=fmt)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{dst}: cannot write there: a part of the folder path is a file, "
                          "not a folder") from None
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write ({exc.strerror}): check the folder, free space "
                          "and permissions") from None


def audio_files(root: Path) -> list[Path]:
    """WAV files below ``root``, sorted, hidden files and our temporaries skipped."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() == ".wav" and not p.name.startswith("."))


def process_tree(src: Path, dst: Path, processor: HopProcessor, opts: FileOptions,
                 progress: bool = True) -> int:
    """Every WAV below ``src`` into the same tree under ``dst``; returns the exit status."""
    from tqdm import tqdm

    files = audio_files(src)
    if not files:
        raise InputError(f"{src}: no .wav files in this folder")
    if dst.resolve().is_relative_to(src.resolve()):
        raise UsageError(f"{dst}: the output folder is inside the input folder: choose another place")
    if opts.ref is not None:
        raise UsageError("--ref takes one file: for a folder, put the reference into a channel of each input")
    failed: list[DtlndError] = []
    start, seconds = time.perf_counter(), 0.0
    # disable=None: no bar when stderr is not a terminal (logs, pipes, systemd).
    bar = tqdm(files, unit="file", disable=None if progress else True, leave=False)
    for path in bar:
        bar.set_postfix_str(path.name, refresh=False)
        try:
            seconds += process_file(path, dst / path.relative_to(src), processor, opts)
        except DtlndError as exc:
            failed.append(exc)
            bar.write(f"dtlnd: error: {exc}", file=sys.stderr)
    bar.close()
    print(summary(f"enhanced {len(files) - len(failed)} of {len(files)} files into {dst}", seconds,
                  time.perf_counter() - start))
    return failed[0].exit_status if failed else 0

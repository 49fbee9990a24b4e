"""The block engines against a plain reference loop, on real models and audio."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from audio_util import hop_output, read, rms_dbfs, snr_db, traced
from reference import reference_loop

from dtlnd import dsp, engine
from dtlnd.runtime import ModelPair

FFTS = dsp.fft_backends()


def test_both_fft_backends_are_installed():
    # CI installs pyfftw; without it half of the tests below would test one path twice.
    assert FFTS == ["pyfftw", "numpy"]


def test_run_imports_leave_out_what_it_does_not_use():
    """What ``dtlnd run`` imports (its command line, every subcommand's parser included, and the daemon)
    leaves out pyfftw's SciPy interfaces (20 MB resident), the model download's HTTP modules (2-7 MB),
    hashlib with OpenSSL (3.5 MB), the model store and the file code (soundfile, soxr); SciPy itself still
    imports whole after.  Modules numpy itself imports do not count (numpy 1.x, the tflite-runtime
    install's, brings hashlib through numpy.random)."""
    unused = ("scipy", "http", "ssl", "urllib.request", "email", "hashlib", "_hashlib", "soundfile", "soxr",
              "dtlnd.store", "dtlnd.download", "dtlnd.offline")
    code = ("import importlib.util, sys, numpy; base = set(sys.modules); import dtlnd.cli; dtlnd.cli.build_parser(); "
            "import dtlnd.dsp as d, dtlnd.service, dtlnd.audio, dtlnd.duplex; "
            f"print(d.pyfftw is not None, sorted(m for m in sys.modules if m.startswith({unused!r}) "
            "and m not in base)); "
            "has = importlib.util.find_spec('scipy') is not None; "
            "fft = importlib.import_module('scipy.fft') if has else None; "
            "print(fft is None or float(fft.rfft([1.0, 2.0])[0].real) == 3.0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split("\n")[:2] == ["True []", "True"], r.stdout


@pytest.fixture(scope="module")
def noisy(audio_dir):
    return read(audio_dir / "airconditioning.wav")


def aec_recording(audio_dir, take: str):
    """Mic and loopback of one AEC-challenge take, cut to the shorter (they differ by < 300 samples)."""
    mic = read(audio_dir / f"{take}_mic.wav")
    lpb = read(audio_dir / f"{take}_lpb.wav")
    n = min(len(mic), len(lpb))
    return mic[:n], lpb[:n]


@pytest.fixture(scope="module")
def farend(audio_dir):
    return aec_recording(audio_dir, "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk")


@pytest.fixture(scope="module")
def nearend(audio_dir):
    return aec_recording(audio_dir, "DLhjtuwiEkS-68TsUVvW5g_nearend_singletalk")


@pytest.mark.parametrize("fft", FFTS)
def test_float_ns_matches_reference_loop(models_dir, noisy, fft):
    proc = engine.NoiseSuppressor(ModelPair.load("dtln_ns_float", models_dir), fft)
    ours = hop_output(proc, noisy)
    ref = reference_loop(models_dir, "dtln_ns_float", noisy)
    assert np.max(np.abs(ours - ref)) <= 1e-5
    assert rms_dbfs(ours) > -40  # not trivially silent


@pytest.mark.parametrize("name", ["dtln_ns_quant", "pidtln2_ns_dynamic", "pidtln2_ns_5"])
def test_quantized_ns_matches_reference_loop(models_dir, noisy, name):
    pair = ModelPair.load(name, models_dir)
    ours = hop_output(engine.NoiseSuppressor(pair), noisy)
    ref = reference_loop(models_dir, name, noisy, runtime=pair.runtime)
    assert snr_db(ref, ours) >= 30


@pytest.mark.parametrize("fft", FFTS)
@pytest.mark.parametrize("name", ["dtln_aec_128_quant", "dtln_aec_256_quant"])
def test_aec_matches_reference_loop(models_dir, nearend, farend, name, fft):
    pair = ModelPair.load(name, models_dir)
    mic, lpb = nearend
    ours = hop_output(engine.EchoCanceller(pair, fft), mic, lpb)
    assert snr_db(reference_loop(models_dir, name, mic, lpb, runtime=pair.runtime), ours) >= 30
    # Far-end single talk leaves only a -70 dBFS residual, where dynamic-range
    # quantization turns FFT rounding differences into a different residual
    # (about 25 dB SNR even between two FFT libraries): compare its level.
    mic, lpb = farend
    ours = hop_output(engine.EchoCanceller(pair, fft), mic, lpb)
    ref = reference_loop(models_dir, name, mic, lpb, runtime=pair.runtime)
    assert rms_dbfs(ours) == pytest.approx(rms_dbfs(ref), abs=1.0)


def test_pidtln2_reexport_agrees_with_dtln(models_dir, noisy):
    """pidtln2_ns_dynamic is DTLN re-exported with the mask folded into model 1
    and its states first: bound right, it must sound like DTLN."""
    a = hop_output(engine.NoiseSuppressor(ModelPair.load("dtln_ns_float", models_dir)), noisy)
    b = hop_output(engine.NoiseSuppressor(ModelPair.load("pidtln2_ns_dynamic", models_dir)), noisy)
    assert ModelPair.load("pidtln2_ns_dynamic", models_dir).mask_is_gain is False
    assert snr_db(a, b) >= 10  # a wrong binding gives about 0 dB


@pytest.mark.parametrize("fft", FFTS)
@pytest.mark.parametrize("mode", ["ns", "aec"])
def test_any_chunking_gives_identical_output(models_dir, farend, mode, fft):
    mic, lpb = farend[0][:16000 * 2], farend[1][:16000 * 2]
    far = lpb if mode == "aec" else None
    proc = engine.build(mode, model_dir=models_dir, fft=fft)
    stream = engine.BlockStream(proc)
    outputs = {}
    for chunk in (128, 1, 37, 480, 4096):
        stream.reset()
        parts = [stream.process(mic[i:i + chunk], None if far is None else far[i:i + chunk])
                 for i in range(0, len(mic), chunk)]
        outputs[chunk] = np.concatenate(parts)
        assert len(outputs[chunk]) == len(mic)
    for chunk, out in outputs.items():
        assert np.array_equal(out, outputs[128]), f"chunks of {chunk} differ from chunks of 128"
    # The stream is the hop path held back by one hop: delay 384 + 128.
    proc.reset()
    hops = hop_output(proc, mic, far)
    d = stream.delay - proc.delay
    assert stream.delay == 512 and proc.delay == 384
    assert np.array_equal(outputs[128][d:], hops[: len(mic) - d])


@pytest.mark.parametrize("name", ["dtln_aec_128_quant", "dtln_aec_256_quant"])
def test_aec_removes_far_end_echo_and_keeps_near_end_talker(models_dir, farend, nearend, name):
    from dtlnd.offline import enhance

    stream = engine.BlockStream(engine.build("aec", name, model_dir=models_dir))
    mic, lpb = farend
    assert rms_dbfs(mic) == pytest.approx(-22.7, abs=0.1)
    assert rms_dbfs(enhance(stream, mic, lpb)) <= -60
    mic, lpb = nearend
    assert abs(rms_dbfs(enhance(stream, mic, lpb)) - rms_dbfs(mic)) <= 2


def test_ns_removes_noise_and_keeps_speech(models_dir, noisy):
    """Per 32 ms frame, ranked by input energy: the quiet frames (noise) lose
    >= 10 dB on average, the loud ones (speech) <= 3 dB."""
    from dtlnd.offline import enhance

    out = enhance(engine.BlockStream(engine.build("ns", model_dir=models_dir)), noisy, None)
    frames = len(noisy) // 512
    e_in = (noisy[: frames * 512].reshape(frames, 512).astype(np.float64) ** 2).sum(axis=1)
    e_out = (out[: frames * 512].reshape(frames, 512).astype(np.float64) ** 2).sum(axis=1)
    loss_db = 10 * np.log10(e_in / e_out)
    order = np.argsort(e_in)
    quiet, loud = order[: frames // 5], order[-(frames // 10):]
    assert loss_db[quiet].mean() >= 10
    assert loss_db[loud].mean() <= 3


@pytest.mark.parametrize("fft", FFTS)
@pytest.mark.parametrize("mode", ["ns", "aec", "aec+ns"])
def test_hop_path_allocates_nothing(models_dir, farend, mode, fft):
    proc = engine.build(mode, model_dir=models_dir, fft=fft)
    mic, lpb = farend
    hops = [(mic[i:i + 128].copy(), lpb[i:i + 128].copy()) for i in range(0, 200 * 128, 128)]
    out = np.zeros(128, np.float32)
    for m, f in hops[:20]:  # steady state: first-call caches filled
        proc.process_hop(m, f, out)
    steady = hops[20:]

    def blocks(step) -> None:
        for m, f in steady:
            step(m, f, out)

    # The measurement itself allocates a little (iterator, result tuples):
    # the same loop around a no-op is the baseline.
    noop = lambda m, f, o: None  # noqa: E731
    hop = proc.process_hop
    loop_kept, loop_peak = map(max, zip(*(traced(lambda: blocks(noop)) for _ in range(3))))
    kept, peak = map(min, zip(*(traced(lambda: blocks(hop)) for _ in range(3))))
    if fft == "pyfftw":
        assert kept <= loop_kept, f"{kept - loop_kept} bytes kept by the hop path"
        assert peak <= loop_peak, f"{peak - loop_peak} bytes allocated on the hop path"
    else:
        # numpy.fft allocates work buffers inside every call (and frees them;
        # numpy 1.x also keeps a small plan cache): the reason pyfftw is the
        # real-time backend.  Nothing else may allocate.
        assert kept - loop_kept < 1024
        assert peak - loop_peak < 32768  # a few FFT-sized arrays at a time, never more

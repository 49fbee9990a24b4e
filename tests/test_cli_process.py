"""The ``dtlnd`` command line as a user runs it: help, ``process`` and ``bench``.

Every case starts the real program (``python -m dtlnd``) in a subprocess,
so argument parsing, exit statuses and what lands on stdout/stderr are
tested end to end.  Each subprocess costs about half a second: cases that
need the same run share a module-scoped fixture.

Comparisons that must be exact run with ``--fft numpy``: FFTW_MEASURE
plans differ from one process to the next, and the quantized models turn
their rounding differences into output differences of about -40 dB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from audio_util import dtlnd, read, snr_db

from dtlnd import engine, offline
from dtlnd.cli import build_parser
from dtlnd.runtime import installed_runtimes

AIRCON = "airconditioning.wav"
MIC = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav"
LPB = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav"


def ok(*args: object) -> subprocess.CompletedProcess:
    r = dtlnd(*args)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return r


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path below ``parser``: ("process",), ("models", "list"), ..."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found.extend(subcommands(sub, (*path, name)))
    return found


COMMANDS = subcommands(build_parser())


def pcm16(path_or_signal: Path | np.ndarray) -> np.ndarray:
    """A file's int16 samples, or a float signal as ``dtlnd process`` would store it in PCM_16."""
    if isinstance(path_or_signal, Path):
        return sf.read(str(path_or_signal), dtype="int16")[0]
    buf = io.BytesIO()
    sf.write(buf, np.clip(path_or_signal, -1.0, 1.0), 16000, subtype="PCM_16", format="WAV")
    buf.seek(0)
    return sf.read(buf, dtype="int16")[0]


def hops(proc, mic: np.ndarray, far: np.ndarray | None = None) -> np.ndarray:
    """The raw hop path: output sample i belongs to input sample i - delay."""
    out = np.zeros(len(mic), np.float32)
    for k in range(0, len(mic) - 127, 128):
        s = slice(k, k + 128)
        proc.process_hop(mic[s], None if far is None else far[s], out[s])
    return out


# --- help and version -----------------------------------------------------------------------------


def test_known_subcommands_are_found():
    assert {("process",), ("bench",), ("models",), ("models", "list"), ("models", "fetch"),
            ("models", "verify")} <= set(COMMANDS)


def test_version():
    r = ok("--version")
    assert r.stdout.startswith("dtlnd ")


def test_top_level_help_lists_every_command():
    r = ok("--help")
    assert r.stdout.startswith("usage: dtlnd")
    for (name,) in (c for c in COMMANDS if len(c) == 1):
        assert name in r.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_subcommand_help(command):
    r = ok(*command, "--help")
    assert r.stdout.startswith(f"usage: dtlnd {' '.join(command)}")
    assert r.stderr == ""


# --- process: one file ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ns_runs(tmp_path_factory, audio_dir):
    """The shared noisy file through ``dtlnd process``: defaults, and as FLOAT with numpy's FFT."""
    tmp = tmp_path_factory.mktemp("ns")
    ok("process", audio_dir / AIRCON, tmp / "pcm.wav")
    ok("process", audio_dir / AIRCON, tmp / "float.wav", "--subtype", "FLOAT", "--fft", "numpy")
    return tmp / "pcm.wav", tmp / "float.wav"


@pytest.fixture(scope="module")
def ns_processor():
    return engine.build("ns", fft="numpy")


def test_output_format_follows_the_input(ns_runs, audio_dir):
    src = sf.info(str(audio_dir / AIRCON))
    pcm, flt = (sf.info(str(p)) for p in ns_runs)
    assert src.subtype == "PCM_16"
    for info, subtype in ((pcm, "PCM_16"), (flt, "FLOAT")):
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, src.frames, subtype)


def test_output_files_are_readable_by_others(ns_runs):
    # Written via mkstemp, which creates 0600; the result must follow the umask like any file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert ns_runs[0].stat().st_mode & 0o777 == 0o666 & ~umask


def test_output_is_the_engine_run_directly(ns_runs, ns_processor, audio_dir):
    mic = read(audio_dir / AIRCON)
    y = offline.enhance(engine.BlockStream(ns_processor), mic, None)
    assert np.max(np.abs(read(ns_runs[1]) - y)) <= 1e-6
    # The default run (pyfftw, PCM_16): the same signal up to FFT plan and quantization noise.
    assert snr_db(y, read(ns_runs[0])) >= 30


def test_output_is_time_aligned_with_the_input(ns_runs, ns_processor, audio_dir):
    mic = read(audio_dir / AIRCON)
    delay = ns_processor.delay
    assert delay == 384
    ns_processor.reset()
    raw = hops(ns_processor, np.concatenate([mic, np.zeros(512, np.float32)]))
    y = read(ns_runs[1])
    assert len(y) == len(mic)
    assert np.max(np.abs(y - raw[delay:delay + len(mic)])) <= 1e-6
    # Misaligned by one hop, the same comparison is far off: the check above has teeth.
    assert np.max(np.abs(y - raw[delay - 128:delay - 128 + len(mic)])) > 1e-2


# --- process: echo cancellation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def aec_runs(tmp_path_factory, audio_dir):
    """The far-end single-talk pair as --ref, as a 2-channel file, and with its channels swapped."""
    tmp = tmp_path_factory.mktemp("aec")
    mic, lpb = read(audio_dir / MIC), read(audio_dir / LPB)
    n = min(len(mic), len(lpb))
    sf.write(str(tmp / "two.wav"), np.stack([mic[:n], lpb[:n]], axis=1), 16000, subtype="PCM_16")
    sf.write(str(tmp / "swapped.wav"), np.stack([lpb[:n], mic[:n]], axis=1), 16000, subtype="PCM_16")
    aec = ("--mode", "aec", "--fft", "numpy")
    runs = {
        "ref": ok("process", audio_dir / MIC, tmp / "ref.wav", *aec, "--ref", audio_dir / LPB),
        "two": ok("process", tmp / "two.wav", tmp / "out_two.wav", *aec),
        "swapped": ok("process", tmp / "swapped.wav", tmp / "out_swapped.wav", *aec,
                      "--channel", "1", "--ref-channel", "0"),
    }
    outputs = {"ref": tmp / "ref.wav", "two": tmp / "out_two.wav", "swapped": tmp / "out_swapped.wav"}
    return runs, outputs, n


def test_aec_with_a_reference_file_truncates_to_the_shorter_and_says_so(aec_runs, audio_dir):
    runs, outputs, n = aec_runs
    assert len(read(audio_dir / MIC)) != n  # the shared pair really differs in length
    assert sf.info(str(outputs["ref"])).frames == n
    assert f"processing the first {n}" in runs["ref"].stderr
    # equal lengths: nothing to say but the reference alignment it applied
    assert [x for x in runs["two"].stderr.splitlines() if "reference alignment" not in x] == []


def test_aec_reference_in_a_channel_equals_reference_file(aec_runs):
    _, outputs, _n = aec_runs
    ref = read(outputs["ref"])
    assert np.array_equal(read(outputs["two"]), ref)
    assert np.array_equal(read(outputs["swapped"]), ref)


def test_aec_output_is_the_engine_run_directly(aec_runs, audio_dir):
    _, outputs, n = aec_runs
    mic, lpb = read(audio_dir / MIC)[:n], read(audio_dir / LPB)[:n]
    y = offline.enhance(engine.BlockStream(engine.build("aec", fft="numpy")), mic, lpb)
    assert np.array_equal(pcm16(outputs["ref"]), pcm16(y))
    assert np.sqrt(np.mean(read(outputs["ref"]) ** 2)) < 0.1 * np.sqrt(np.mean(mic ** 2))  # echo removed


# --- process: resampling and folders --------------------------------------------------------------


def test_48k_input_is_resampled_to_16k(tmp_path, audio_dir):
    x = read(audio_dir / AIRCON)
    sf.write(str(tmp_path / "in48.wav"), soxr.resample(x, 16000, 48000), 48000, subtype="PCM_16")
    r = ok("process", tmp_path / "in48.wav", tmp_path / "out.wav")
    assert "resampl" in r.stderr
    info = sf.info(str(tmp_path / "out.wav"))
    assert (info.samplerate, info.frames, info.subtype) == (16000, len(x), "PCM_16")


def test_folder_mirrors_the_tree_and_reports_a_bad_file(tmp_path, audio_dir):
    src, dst = tmp_path / "in", tmp_path / "out"
    good = ["a.wav", "sub/b.wav", "sub/deeper/c.WAV"]
    for name in good:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((audio_dir / AIRCON).read_bytes())
    (src / "sub" / "bad.wav").write_text("not audio\n")
    (src / "notes.txt").write_text("not a wav, not processed\n")
    r = dtlnd("process", src, dst)
    assert r.returncode == 65, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "bad.wav" in line]
    assert len(errors) == 1 and errors[0].startswith("dtlnd: error:")
    assert "bad.wav" not in r.stdout
    produced = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert produced == sorted(good)
    for name in good:
        assert sf.info(str(dst / name)).frames == 160000


# --- bench ----------------------------------------------------------------------------------------

BENCH = ("bench", "--blocks", "300", "--model", "dtln_ns_quant", "--model", "dtln_aec_128_quant")


def test_bench_json(audio_dir):
    r = ok(*BENCH, "--json", "--audio", audio_dir / AIRCON)
    report = json.loads(r.stdout)
    runtimes = installed_runtimes()
    results = report["results"]
    assert sorted((x["model"], x["runtime"]) for x in results) == sorted(
        (m, rt) for m in ("dtln_ns_quant", "dtln_aec_128_quant") for rt in runtimes if rt != "onnxruntime")
    assert report["errors"] == []
    for x in results:
        assert x["kind"] == ("ns" if "_ns_" in x["model"] else "aec")
        assert x["blocks"] >= 300
        for part in ("engine", "floor"):
            assert min(x[part].values()) > 0, x
        assert x["ratio"] == pytest.approx(x["engine"]["mean"] / x["floor"]["mean"], abs=1e-3)


def test_bench_table(audio_dir):
    r = ok(*BENCH, "--audio", audio_dir / AIRCON)
    lines = r.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.split()[:2] == ["model", "runtime"]]
    assert len(header) == 1
    rows = [line.split() for line in lines[header[0] + 1:]]
    assert sorted((row[0], row[1]) for row in rows) == sorted(
        (m, rt) for m in ("dtln_ns_quant", "dtln_aec_128_quant") for rt in installed_runtimes() if rt != "onnxruntime")
    for row in rows:
        assert len(row) == 10 and row[-1].endswith("%")

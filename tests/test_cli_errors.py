"""``dtlnd process`` on bad input: one line on stderr, a documented status, nothing written.

Exit statuses (``dtlnd.cli``): 64 bad command line, 65 bad input file, 73
output not writable, 78 bad configuration or model.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from audio_util import dtlnd, read

from dtlnd.errors import ModelError
from dtlnd.runtime import load_runtime

AIRCON = "airconditioning.wav"
MIC = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav"
LPB = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_lpb.wav"

ARGPARSE = "dtlnd process: error:"
DTLND = "dtlnd: error:"


def files_below(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_one_line_error(r: subprocess.CompletedProcess, status: int, prefix: str, words: str) -> None:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(prefix), r.stderr
    assert words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert r.returncode == status, r.stderr


class Case:
    """Inputs made in ``tmp``, the extra arguments, and what the user must be told."""

    def __init__(self, status: int, words: str, setup: Callable[[Path, Path, Path], list],
                 prefix: str = DTLND) -> None:
        self.status, self.words, self.setup, self.prefix = status, words, setup, prefix


def pair_dir(tmp: Path, models: Path, files: dict[str, str]) -> Path:
    """A model folder holding copies of shared files under new names."""
    d = tmp / "models"
    d.mkdir(exist_ok=True)
    for new, old in files.items():
        shutil.copyfile(models / old, d / new)
    return d


def _missing_model_2(tmp, audio, models):
    d = pair_dir(tmp, models, {"dtln_ns_quant_1.tflite": "dtln_ns_quant_1.tflite"})
    return [audio / AIRCON, "--model-dir", d]


def _truncated_model(tmp, audio, models):
    d = pair_dir(tmp, models, {f"dtln_ns_quant_{i}.tflite": f"dtln_ns_quant_{i}.tflite" for i in (1, 2)})
    with open(d / "dtln_ns_quant_2.tflite", "r+b") as f:
        f.truncate(1000)
    return [audio / AIRCON, "--model-dir", d]


def _random_bytes_model(tmp, audio, models):
    d = pair_dir(tmp, models, {"dtln_ns_quant_1.tflite": "dtln_ns_quant_1.tflite"})
    (d / "dtln_ns_quant_2.tflite").write_bytes(np.random.default_rng(0).bytes(400_000))
    return [audio / AIRCON, "--model-dir", d]


def _ns_1_with_aec_2(tmp, audio, models):
    d = pair_dir(tmp, models, {"mixed_1.tflite": "dtln_ns_quant_1.tflite",
                               "mixed_2.tflite": "dtln_aec_256_quant_2.tflite"})
    return [audio / AIRCON, "--model-dir", d, "--model", "mixed"]


def _aec_128_with_aec_256(tmp, audio, models):
    d = pair_dir(tmp, models, {"mixed_1.tflite": "dtln_aec_128_quant_1.tflite",
                               "mixed_2.tflite": "dtln_aec_256_quant_2.tflite"})
    return [audio / MIC, "--model-dir", d, "--model", "mixed", "--mode", "aec", "--ref", audio / LPB]


def _text_input(tmp, audio, models):
    (tmp / "notes.wav").write_text("this is not audio\n")
    return [tmp / "notes.wav"]


def _empty_wav(tmp, audio, models):
    sf.write(str(tmp / "empty.wav"), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    return [tmp / "empty.wav"]


def _two_channels(tmp, audio, models):
    mic, lpb = read(audio / MIC), read(audio / LPB)
    n = min(len(mic), len(lpb))
    sf.write(str(tmp / "two.wav"), np.stack([mic[:n], lpb[:n]], axis=1), 16000, subtype="PCM_16")
    return [tmp / "two.wav", "--mode", "aec"]


def _runtime_not_installed(tmp, audio, models):
    if importlib.util.find_spec("tflite_runtime") is not None:
        pytest.skip("tflite_runtime is installed here")
    return [audio / AIRCON, "--runtime", "tflite-runtime"]


def _unwritable_output(tmp, audio, models):
    (tmp / "afile").write_text("a file where the output folder should be\n")
    return [audio / AIRCON]  # OUT is replaced below


CASES = {
    # models
    "model 2 missing": Case(78, "missing", _missing_model_2),
    "model truncated": Case(78, "cannot load it", _truncated_model),
    "model random bytes": Case(78, "not a TF-Lite model", _random_bytes_model),
    "pair ns_1 + aec_2": Case(78, "different pairs", _ns_1_with_aec_2),
    "pair aec_128 + aec_256": Case(78, "different pairs", _aec_128_with_aec_256),
    "unknown model": Case(78, "'nosuch' not found", lambda t, a, m: [a / AIRCON, "--model", "nosuch"]),
    "model name with a path": Case(78, "not a pair name", lambda t, a, m: [a / AIRCON, "--model", "../x"]),
    "model dir missing": Case(78, "not found", lambda t, a, m: [a / AIRCON, "--model-dir", t / "nosuch"]),
    "ns pair for aec": Case(78, "cannot cancel echo", lambda t, a, m: [
        a / MIC, "--mode", "aec", "--model", "dtln_ns_quant", "--ref", a / LPB]),
    "runtime not installed": Case(78, "runtime tflite-runtime is not usable", _runtime_not_installed),
    # input
    "input not a wav": Case(65, "not a WAV", _text_input),
    "input empty": Case(65, "no audio frames", _empty_wav),
    "input missing": Case(65, "no such file", lambda t, a, m: [t / "nosuch.wav"]),
    "reference missing": Case(65, "no such file", lambda t, a, m: [
        a / MIC, "--mode", "aec", "--ref", t / "nosuch.wav"]),
    # command line
    "aec without reference": Case(64, "far-end reference", lambda t, a, m: [a / AIRCON, "--mode", "aec"]),
    "aec+ns without reference": Case(64, "far-end reference", lambda t, a, m: [a / AIRCON, "--mode", "aec+ns"]),
    "channel out of range": Case(64, "--channel 3 is out of range", lambda t, a, m: [a / AIRCON, "--channel", "3"]),
    "ref-channel out of range": Case(64, "--ref-channel 2 is out of range",
                                     lambda t, a, m: [*_two_channels(t, a, m), "--ref-channel", "2"]),
    "ref-channel out of range in --ref": Case(64, "--ref-channel 1 is out of range", lambda t, a, m: [
        a / MIC, "--mode", "aec", "--ref", a / LPB, "--ref-channel", "1"]),
    "ref-channel is the mic": Case(64, "both pick channel 0",
                                   lambda t, a, m: [*_two_channels(t, a, m), "--ref-channel", "0"]),
    "ref with mode ns": Case(64, "--ref is only used", lambda t, a, m: [a / AIRCON, "--ref", a / LPB]),
    "bad subtype": Case(64, "--subtype NOSUCH", lambda t, a, m: [a / AIRCON, "--subtype", "NOSUCH"]),
    "threads 0": Case(64, "--threads 0", lambda t, a, m: [a / AIRCON, "--threads", "0"]),
    "unknown runtime": Case(64, "invalid choice: 'nosuch'", lambda t, a, m: [a / AIRCON, "--runtime", "nosuch"],
                            prefix=ARGPARSE),
    "channel not a number": Case(64, "--channel", lambda t, a, m: [a / AIRCON, "--channel", "left"],
                                 prefix=ARGPARSE),
    # output
    "output below a file": Case(73, "cannot write", _unwritable_output),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_writes_nothing(name, tmp_path, audio_dir, models_dir):
    case = CASES[name]
    args = case.setup(tmp_path, audio_dir, models_dir)
    out = tmp_path / ("afile" if name == "output below a file" else "out") / "out.wav"
    before = files_below(tmp_path)
    r = dtlnd("process", args[0], out, *args[1:])
    assert_one_line_error(r, case.status, case.prefix, case.words)
    assert files_below(tmp_path) == before  # no output, no .part file, inputs untouched


@pytest.mark.parametrize("name", ["model truncated", "input not a wav", "bad subtype", "aec without reference"])
def test_failure_keeps_an_existing_output(name, tmp_path, audio_dir, models_dir):
    case = CASES[name]
    args = case.setup(tmp_path, audio_dir, models_dir)
    out = tmp_path / "out.wav"
    out.write_bytes(b"sentinel: an earlier result the user wants to keep")
    before = files_below(tmp_path)
    r = dtlnd("process", args[0], out, *args[1:])
    assert_one_line_error(r, case.status, case.prefix, case.words)
    assert files_below(tmp_path) == before


def test_output_onto_the_input_is_refused(tmp_path, audio_dir):
    src = tmp_path / "in.wav"
    shutil.copyfile(audio_dir / AIRCON, src)
    r = dtlnd("process", src, src)
    assert_one_line_error(r, 64, DTLND, "overwrite the input")
    assert src.read_bytes() == (audio_dir / AIRCON).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["in.wav"]


# --- the runtime fallback, in process ------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tflite_runtime") is not None, reason="tflite_runtime is installed")
def test_missing_runtime_is_a_one_line_model_error():
    with pytest.raises(ModelError) as info:
        load_runtime("tflite-runtime")
    msg = str(info.value)
    assert "\n" not in msg and "tflite_runtime" in msg and "runtime auto" in msg
    assert info.value.exit_status == 78


def test_unknown_runtime_is_a_one_line_model_error():
    with pytest.raises(ModelError) as info:
        load_runtime("nosuch")
    assert "\n" not in str(info.value) and "ai-edge-litert" in str(info.value)


def test_auto_runtime_loads_one():
    name, interpreter = load_runtime("auto")
    assert name in ("ai-edge-litert", "tflite-runtime", "tensorflow") and callable(interpreter)

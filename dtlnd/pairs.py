"""Where a model pair's files are: the one pair search every command shares.

The daemon, ``process``, ``bench`` and ``models list|verify`` all see the
same folder for a pair.  This module is light on purpose (no hashlib, no
manifest): ``dtlnd run`` needs only this part of the model store.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from . import paths
from .constants import MODEL_FORMATS
from .errors import ModelError

DirArg = Union[str, Path, Sequence[Union[str, Path]], None]


def search_dirs(dirs: DirArg = None) -> list[Path]:
    """``dirs`` as a list of folders; None is the model search path."""
    if dirs is None:
        return paths.model_search_path()
    if isinstance(dirs, (str, Path)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


@dataclass(frozen=True)
class Location:
    """Where a pair is: its folder, its form and the two file paths."""

    name: str
    fmt: str
    folder: Path

    @property
    def paths(self) -> tuple[Path, Path]:
        return (self.folder / f"{self.name}_1.{self.fmt}", self.folder / f"{self.name}_2.{self.fmt}")

    @property
    def complete(self) -> bool:
        return all(p.is_file() for p in self.paths)


def locate(name: str, dirs: DirArg = None, formats: Sequence[str] = MODEL_FORMATS) -> Optional[Location]:
    """The folder and form a pair loads from: forms in ``formats`` order, each
    searched along the folders; the first folder holding model 1 wins, so
    TF-Lite files anywhere come before ONNX ones.  Failing that, the first
    holding model 2, so a half-installed pair is reported, not shown absent."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ModelError(f"model name {name!r} is not a pair name like dtln_ns_quant")
    folders = search_dirs(dirs)
    for n in (1, 2):
        for fmt in formats:
            for d in folders:
                if (d / f"{name}_{n}.{fmt}").is_file():
                    return Location(name, fmt, d)
    return None


def pair_names(dirs: DirArg = None, formats: Sequence[str] = MODEL_FORMATS) -> list[str]:
    """Names of the pairs with both files of some form present, in search-path order."""
    names: list[str] = []
    for d in search_dirs(dirs):
        if not d.is_dir():
            continue
        for fmt in formats:
            for first in sorted(d.glob(f"*_1.{fmt}")):
                name = first.name[: -len(f"_1.{fmt}")]
                if (d / f"{name}_2.{fmt}").is_file() and name not in names:
                    names.append(name)
    return names

"""The one atomic-write helper behind ``process`` outputs and ``models fetch``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dtlnd import atomic, offline, store
from dtlnd.errors import OutputError


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_umask_is_read_without_changing_it(umask_027: int) -> None:
    assert atomic.umask() == umask_027
    assert os.umask(umask_027) == umask_027  # still what the fixture set


def test_file_gets_plain_open_modes_and_no_temporary_is_left(tmp_path: Path, umask_027: int) -> None:
    dest = tmp_path / "x.bin"
    with atomic.atomic_write(dest) as f:
        f.write(b"new")
        assert not dest.exists()  # nothing at the final path until the block ends
        assert [p.name.endswith(atomic.PART_SUFFIX) for p in tmp_path.iterdir()] == [True]
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_mode & 0o777 == 0o640
    assert list(tmp_path.iterdir()) == [dest]


def test_failure_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "x.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_write(dest) as f:
        f.write(b"half")
        raise RuntimeError("cut off")
    assert dest.read_bytes() == b"old" and list(tmp_path.iterdir()) == [dest]


def test_process_output_and_fetched_models_share_the_modes(tmp_path: Path, umask_027: int,
                                                           models_dir: Path) -> None:
    wav = tmp_path / "out.wav"
    offline.write_atomic(wav, np.zeros(160, np.float32), "WAV", "PCM_16")
    store.fetch(["dtln_ns_quant"], tmp_path / "m", from_dir=models_dir, progress=False, formats=("tflite",))
    modes = {p.stat().st_mode & 0o777 for p in [wav, *sorted((tmp_path / "m").iterdir())]}
    assert modes == {0o640}


def test_no_folder_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="a part of the folder path is a file"):
        offline.write_atomic(tmp_path / "file" / "out.wav", np.zeros(160, np.float32), "WAV", "PCM_16")


def test_named_mode_and_no_fsync_still_replace_whole(tmp_path: Path, umask_027: int) -> None:
    dest = tmp_path / "status.json"
    dest.write_bytes(b"old")
    with atomic.atomic_write(dest, mode=0o644, durable=False) as f:
        f.write(b"new")
        assert dest.read_bytes() == b"old"
    assert dest.read_bytes() == b"new" and dest.stat().st_mode & 0o777 == 0o644
    assert list(tmp_path.iterdir()) == [dest]

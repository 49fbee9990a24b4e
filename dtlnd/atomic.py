"""Write a file so that its final path never holds half of it.

The bytes go to a temporary file beside the target, which is fsynced,
renamed over the target and made durable by an fsync of the folder: after a
crash or power loss (SD cards) the target is either the old file or the
whole new one.  The file gets the modes a plain ``open(path, "wb")`` would
give (0666 less the umask), not ``mkstemp``'s private 0600, unless the
caller names its mode.  A file that need not outlive a crash (the state
file in ``/run``, rewritten every second) skips both fsyncs: a reader still
never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Optional

#: Suffix of the temporary files; they are hidden (``.NAME.XXXX.part``).
PART_SUFFIX = ".part"


def umask() -> int:
    """The process umask, read from /proc where possible: setting it to read
    it back would race with other threads creating files meanwhile."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a folder that cannot be opened or
    synced (some network file systems) is left as it is."""
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


@contextmanager
def atomic_write(dest: Path, mode: Optional[int] = None, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``dest`` when the block ends normally.

    ``mode``: the file's permission bits (default: 0666 less the umask).
    ``durable``: fsync the file and the folder (not for files that are
    rewritten all the time and mean nothing after a reboot).  If the block
    raises, the temporary file is deleted and ``dest`` is untouched.
    OSErrors (no space, no permission, a file where the folder should be)
    propagate unchanged: callers word them in their own terms.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=PART_SUFFIX)
    tmp: Path | None = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~umask() if mode is None else mode)
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp_name, dest)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(dest.parent)

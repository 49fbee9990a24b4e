"""Pictures (matplotlib, Agg backend; the ``eval`` extra): spectrograms and levels on one time axis.

Small functions so that other commands (``run --measure --plot``) can reuse
`check_writable`, `new_figure` and `save_png`.  A PNG is written to a
temporary file beside the target and renamed into place, so a failure never
leaves a half-written picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .atomic import atomic_write
from .constants import BLOCK, RATE, SHIFT
from .errors import OutputError

#: Spectrogram colour range: this many dB below the loudest bin of all panels are black.
DYNAMIC_RANGE_DB = 90.0
#: Level curve frame, samples (20 ms, as the metrics use).
LEVEL_FRAME = 320


def check_writable(path: Path) -> None:
    """Raise OutputError (exit 73) now, before any work, if ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder: give a file name for the picture, e.g. {path / 'eval.png'}")
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write there: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{path}: cannot write there (permission denied): choose another place for the picture")


def new_figure(rows: int, height_ratios: Optional[list[float]] = None) -> tuple[Any, Any]:
    """A figure of ``rows`` panels sharing the time axis (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False, height_ratios=height_ratios)[:, 0]
    return fig, axes


def spectrogram_db(x: np.ndarray) -> np.ndarray:
    """Power spectrogram, dBFS per bin, of DTLN's own framing (512-sample Hann windows, 128 hop)."""
    n = max(0, (len(x) - BLOCK) // SHIFT + 1)
    if n == 0:
        x = np.concatenate([x, np.zeros(BLOCK - len(x), np.float32)])
        n = 1
    frames = np.lib.stride_tricks.sliding_window_view(x, BLOCK)[::SHIFT][:n]
    win = np.hanning(BLOCK).astype(np.float32)
    spec = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2 / (np.sum(win) ** 2 / 4)
    return 10.0 * np.log10(np.maximum(spec, 1e-14)).T


def draw_spectrogram(ax: Any, x: np.ndarray, title: str, top_db: float) -> Any:
    """One spectrogram panel: time in s, frequency in kHz, colour in dBFS."""
    s = spectrogram_db(x)
    extent = (0.0, len(x) / RATE, 0.0, RATE / 2000.0)
    im = ax.imshow(s, origin="lower", aspect="auto", extent=extent, cmap="magma",
                   vmin=top_db - DYNAMIC_RANGE_DB, vmax=top_db, interpolation="nearest")
    ax.set_ylabel("kHz")
    ax.set_title(title, loc="left", fontsize=10)
    return im


def levels_dbfs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame centre times s, frame RMS dBFS) over 20 ms frames."""
    from .metrics import frame_levels

    db = frame_levels(x, LEVEL_FRAME)
    t = (np.arange(len(db)) + 0.5) * LEVEL_FRAME / RATE
    return t, db


def save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` to ``path`` through `dtlnd.atomic` (never a half-written PNG)."""
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, format="png", dpi=110)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror}): check free space and permissions") from None


def save_evaluation(path: Path, name: str, mic: np.ndarray, far: Optional[np.ndarray],
                    outputs: dict[str, np.ndarray]) -> None:
    """Spectrograms of the input, the reference (if any) and each output, then their levels, one time axis."""
    panels = [(f"input (microphone): {name}", mic)]
    if far is not None:
        panels.append(("far-end reference (loudspeaker)", far))
    panels += [(f"output: {label}", y) for label, y in outputs.items()]
    fig, axes = new_figure(len(panels) + 1, [1.0] * len(panels) + [1.1])
    top = max(float(spectrogram_db(x).max()) for _, x in panels)
    im = None
    for ax, (title, x) in zip(axes, panels):
        im = draw_spectrogram(ax, x, title, top)
    fig.colorbar(im, ax=list(axes), label="power, dBFS per bin", pad=0.01, shrink=0.8, anchor=(0.0, 1.0))
    lv = axes[-1]
    for title, x in panels:
        t, db = levels_dbfs(x)
        lv.plot(t, db, linewidth=0.9, label=title.split(":")[0] + (f": {title.split(': ')[1]}"
                                                                    if title.startswith("output") else ""))
    lv.set_ylabel("RMS, dBFS")
    lv.set_xlabel("time, s")
    lv.set_title("level over time (20 ms frames)", loc="left", fontsize=10)
    lv.set_ylim(max(-100.0, min(float(levels_dbfs(x)[1].min()) for _, x in panels) - 5), 0)
    lv.grid(True, alpha=0.3)
    lv.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), fontsize=8, ncol=4, frameon=False)
    lv.set_xlim(0, len(mic) / RATE)
    save_png(fig, path)

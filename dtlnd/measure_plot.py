"""``dtlnd run --measure --plot FILE.png``: the run's timeline as one picture (`dtlnd.plots` draws it).

matplotlib (Agg) comes with the ``dtlnd[eval]`` extra and is imported only
here, only when ``--plot`` is given.  `check` runs before the daemon starts,
so a missing extra (exit 69) or an unwritable path (exit 73) fails at once,
not after an hour of audio.  The figure and the atomic PNG write are
`dtlnd.plots`' (shared with ``evaluate --plot``): no half-written PNG is
ever left.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from . import plots
from .constants import BUDGET_MS
from .errors import ExtraMissing
from .measure import Timeline


def check(path: Path) -> None:
    """Fail now if the plot could not be written at the end of the run."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # in sys.modules as None: made unimportable
        found = False
    if not found:
        raise ExtraMissing("--plot needs matplotlib, which is not installed: pip install 'dtlnd[eval]'")
    plots.check_writable(path)


def _top(values: np.ndarray, floor: float) -> float:
    """The axis top: the largest finite value, but at least ``floor`` (so a flat zero is visible as zero)."""
    finite = values[np.isfinite(values)]
    return max(floor, float(finite.max()) if len(finite) else 0.0)


def write(path: Path, timeline: Timeline, title: str) -> None:
    """Engine time, buffer fill, xruns/misses/lost audio and the reference delay on one time axis."""
    c = timeline.columns()
    t = c["seconds"]
    has_delay = bool(np.isfinite(c["ref_delay_ms"]).any())
    fig, axes = plots.new_figure(4 if has_delay else 3)
    fig.suptitle(f"dtlnd run --measure: {title}")
    ax = axes[0]
    ax.plot(t, c["mean_ms"], label="mean")
    ax.plot(t, c["max_ms"], label="max", alpha=0.7)
    ax.axhline(BUDGET_MS, color="red", linestyle="--", linewidth=1, label=f"budget {BUDGET_MS:g} ms")
    ax.set_ylabel("engine time\nper block (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize="small")
    ax = axes[1]
    ax.plot(t, c["buffer_ms"], color="tab:green", marker=".")
    ax.set_ylabel("clock-bridge\nbuffer (ms)")
    ax.set_ylim(0, 1.25 * _top(c["buffer_ms"], 10.0))
    ax = axes[2]
    ax.step(t, c["xruns"], where="post", label="xruns", linewidth=2)
    ax.step(t, c["misses"], where="post", label="deadline misses", linestyle="--")
    ax.set_ylabel("count since start")
    ax.set_ylim(0, 1.25 * _top(np.concatenate([c["xruns"], c["misses"]]), 4.0))
    ax.yaxis.get_major_locator().set_params(integer=True)
    twin = ax.twinx()
    twin.step(t, c["lost_ms"], where="post", color="tab:red", label="lost audio (ms)")
    twin.set_ylabel("lost audio since start (ms)", color="tab:red")
    twin.set_ylim(0, 1.25 * _top(c["lost_ms"], 100.0))
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize="small")
    if has_delay:
        axes[3].plot(t, c["ref_delay_ms"], color="tab:purple", marker=".")
        axes[3].set_ylabel("reference delay\napplied (ms)")
        axes[3].set_ylim(0, 1.25 * _top(c["ref_delay_ms"], 50.0))
    axes[-1].set_xlabel("time since start (s)")
    for a in axes:
        a.grid(True, alpha=0.3)
    plots.save_png(fig, path)

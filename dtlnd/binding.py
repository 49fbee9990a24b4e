"""Which tensor of a DTLN model does what, whatever the runtime.

The files disagree on input order (and PiDTLN2 even puts model 2's states
first among its outputs), so nothing here trusts a position: a tensor's
role comes from its shape (4-D = LSTM states, 257 bins = spectrum, 512
samples = time block) and, where two inputs share a shape (the AEC pairs'
near-end and far-end signals), from its Keras input name.  TF-Lite and
ONNX models go through the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .constants import BINS
from .errors import ModelError


class Model:
    """What the engine uses of one loaded model, TF-Lite or ONNX: flat float32
    views on the buffers the model reads and writes, and ``invoke``, which
    runs the model on them.  Subclasses set every attribute when they load."""

    path: Path
    signal: np.ndarray
    far: Optional[np.ndarray]
    state_in: np.ndarray
    state_out: np.ndarray
    out: np.ndarray
    state_shape: tuple[int, ...]
    units: int
    is_aec: bool
    input_names: list[str]
    invoke: Callable[[], Any]

    def check_views(self) -> None:
        """Fail if the engine's views are not the buffers the runtime uses."""
        raise NotImplementedError

    def reset(self) -> None:
        """Zero the input state (start of stream, or after a gap)."""
        self.state_in.fill(0.0)


@dataclass(frozen=True)
class Tensor:
    """A model input or output: ``key`` is what the runtime addresses it by."""

    name: str
    key: object
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Roles:
    """The tensors of one model by role; ``far`` is None for NS models."""

    signal: Tensor
    far: Optional[Tensor]
    state_in: Tensor
    state_out: Tensor
    out: Tensor

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.state_in.shape

    def items(self) -> list[tuple[str, Tensor]]:
        pairs = [("signal", self.signal), ("state_in", self.state_in), ("state_out", self.state_out),
                 ("out", self.out)]
        return pairs + ([("far", self.far)] if self.far is not None else [])


def keras_order(name: str) -> tuple[int, str]:
    """Sort key: Keras numbers inputs in creation order (``input_3`` < ``input_4``)."""
    m = re.search(r"(\d+)(?::\d+)?$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


def assign_roles(ins: list[Tensor], outs: list[Tensor], size: int, where: str) -> Roles:
    """Bind the tensors of model 1 (``size`` = 257) or model 2 (512) by shape and name."""
    states_in = [t for t in ins if len(t.shape) == 4]
    states_out = [t for t in outs if len(t.shape) == 4]
    signals_in = sorted((t for t in ins if t.shape == (1, 1, size)), key=lambda t: keras_order(t.name))
    signals_out = [t for t in outs if t.shape == (1, 1, size)]
    bound = states_in + states_out + signals_in + signals_out
    other = [t for t in ins + outs if t not in bound]
    if other or len(states_in) != 1 or len(states_out) != 1 or len(signals_out) != 1 \
            or len(signals_in) not in (1, 2):
        shapes = ", ".join(f"{t.name}{list(t.shape)}" for t in ins)
        stage = "model 1 (257-bin mask estimator)" if size == BINS else "model 2 (512-sample block stage)"
        raise ModelError(
            f"{where}: tensors do not fit a DTLN {stage} (inputs: {shapes}): "
            "check that _1 and _2 are the right files of one pair"
        )
    st_in, st_out = states_in[0], states_out[0]
    if st_in.shape != st_out.shape or st_in.shape[0] != 1 or st_in.shape[3] != 2:
        raise ModelError(f"{where}: LSTM state tensors {list(st_in.shape)} / {list(st_out.shape)} "
                         "are not [1, layers, units, 2]: not a DTLN model")
    far = signals_in[1] if len(signals_in) == 2 else None
    return Roles(signals_in[0], far, st_in, st_out, signals_out[0])

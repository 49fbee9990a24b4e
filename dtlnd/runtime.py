"""TF-Lite model pairs: find the files, load them, bind every tensor by role.

A DTLN pair is two interpreters whose LSTM states are explicit input and
output tensors.  The files disagree on input order (and PiDTLN2 even puts
model 2's states first among its outputs), so nothing here trusts a
position: a tensor's role comes from its shape (4-D = LSTM states, 257 bins =
spectrum, 512 samples = time block) and, where two inputs share a shape (the
AEC pairs' near-end and far-end signals), from its Keras input name.

The engine keeps numpy views on the interpreters' own tensors for the life
of a pair and calls the wrapper's ``Invoke`` directly: the public
``invoke()`` refuses to run while such views exist (a guard against
``allocate_tensors()`` moving the buffers, which never happens after
binding).  `ModelPair` checks once that the buffers do not move.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from . import paths
from .constants import BINS, BLOCK
from .errors import ModelError

#: Runtimes in the order ``auto`` tries them, with the module that holds
#: their ``Interpreter`` class.
RUNTIMES: dict[str, str] = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}

_TFLITE_MAGIC = b"TFL3"

log = logging.getLogger("dtlnd")


def load_runtime(name: str = "auto") -> tuple[str, type]:
    """Return ``(runtime name, Interpreter class)``.

    ``auto`` takes the first runtime that imports; a named one must import
    or the error says why (e.g. tflite-runtime 2.14 next to numpy 2).
    """
    if name != "auto" and name not in RUNTIMES:
        raise ModelError(
            f"unknown runtime {name!r}: use one of auto, {', '.join(RUNTIMES)}"
        )
    reasons = []
    for rt, module in RUNTIMES.items():
        if name not in ("auto", rt):
            continue
        try:
            return rt, importlib.import_module(module).Interpreter
        except Exception as exc:  # ImportError, or numpy ABI errors at import
            reasons.append(f"{rt}: {type(exc).__name__}: {exc}".splitlines()[0])
    if name == "auto":
        raise ModelError(
            "no TF-Lite runtime could be imported ("
            + "; ".join(reasons)
            + "): pip install ai-edge-litert"
        )
    raise ModelError(f"runtime {name} is not usable ({reasons[0]}): install it or use runtime auto")


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Collect the lines the runtime's C++ code writes to stderr meanwhile.

    TF-Lite prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    straight to file descriptor 2 (no setting of ai-edge-litert turns it
    off), which would make every one-line error two lines.  The caller
    decides what to pass on.  Meant for model loading at start-up: output of
    other threads meanwhile is collected too.
    """
    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to hide
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(line for line in tmp.read().decode(errors="replace").splitlines() if line.strip())


def installed_runtimes() -> list[str]:
    """Names of the runtimes that import on this machine."""
    found = []
    for rt in RUNTIMES:
        try:
            load_runtime(rt)
        except ModelError:
            continue
        found.append(rt)
    return found


def find_pair(name: str, model_dir: Optional[Path] = None) -> tuple[Path, Path]:
    """Locate ``NAME_1.tflite`` and ``NAME_2.tflite``.

    With ``model_dir`` only that folder is searched; otherwise the search
    path of `dtlnd.paths.model_search_path` is, first folder holding model 1
    wins.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ModelError(f"model name {name!r} is not a pair name like dtln_ns_quant")
    dirs = [Path(model_dir)] if model_dir is not None else paths.model_search_path()
    for d in dirs:
        first = d / f"{name}_1.tflite"
        if first.exists():
            second = d / f"{name}_2.tflite"
            if not second.exists():
                raise ModelError(
                    f"{second}: missing (model 1 is there): run 'dtlnd models fetch {name}'"
                )
            return first, second
    searched = ", ".join(str(d) for d in dirs)
    known = available_pairs(model_dir)
    hint = f"; pairs found: {', '.join(known)}" if known else ""
    raise ModelError(
        f"model {name!r} not found in {searched}{hint}: "
        f"run 'dtlnd models fetch {name}' or set --model-dir"
    )


def available_pairs(model_dir: Optional[Path] = None) -> list[str]:
    """Pair names with both files present, in search-path order."""
    dirs = [Path(model_dir)] if model_dir is not None else paths.model_search_path()
    names: list[str] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for first in sorted(d.glob("*_1.tflite")):
            name = first.name[: -len("_1.tflite")]
            if (d / f"{name}_2.tflite").exists() and name not in names:
                names.append(name)
    return names


@dataclass(frozen=True)
class _Tensor:
    name: str
    index: int
    shape: tuple[int, ...]


def _keras_order(name: str) -> tuple[int, str]:
    """Sort key: Keras numbers inputs in creation order (``input_3`` < ``input_4``)."""
    m = re.search(r"(\d+)(?::\d+)?$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


class BoundModel:
    """One interpreter with its tensors bound to roles.

    Attributes are flat float32 numpy views on the interpreter's buffers:
    ``signal`` (the main input: magnitude for model 1, time block for model
    2), ``far`` (the far-end input of AEC models, else None),
    ``state_in``/``state_out``, and ``out`` (mask / time block).
    """

    def __init__(self, path: Path, interpreter_cls: type, threads: int, size: int) -> None:
        self.path = path
        try:
            head = path.read_bytes()[:8]
        except OSError as exc:
            raise ModelError(f"{path}: cannot read ({exc.strerror}): check the path and permissions") from None
        if len(head) < 8 or head[4:8] != _TFLITE_MAGIC:
            raise ModelError(f"{path}: not a TF-Lite model file: re-fetch it with 'dtlnd models fetch'")
        error: Optional[Exception] = None
        with _native_stderr() as native:
            try:
                self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
            except Exception as exc:
                error = exc
        for line in native:
            log.log(logging.DEBUG if error or line.startswith("INFO:") else logging.WARNING, "%s: %s",
                    path.name, line)
        if error is not None:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(
                f"{path}: the TF-Lite runtime cannot load it ({first}): the file is damaged or truncated; "
                "re-fetch it with 'dtlnd models fetch'"
            ) from None
        ins = [_Tensor(d["name"], int(d["index"]), tuple(int(s) for s in d["shape"]))
               for d in self.interpreter.get_input_details()]
        outs = [_Tensor(d["name"], int(d["index"]), tuple(int(s) for s in d["shape"]))
                for d in self.interpreter.get_output_details()]
        self._bind(ins, outs, size)

    def _bind(self, ins: list[_Tensor], outs: list[_Tensor], size: int) -> None:
        where = self.path.name
        states_in = [t for t in ins if len(t.shape) == 4]
        states_out = [t for t in outs if len(t.shape) == 4]
        signals_in = sorted((t for t in ins if t.shape == (1, 1, size)), key=lambda t: _keras_order(t.name))
        signals_out = [t for t in outs if t.shape == (1, 1, size)]
        other = [t for t in ins + outs if t not in states_in + states_out + signals_in + signals_out]
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
        self.state_shape = st_in.shape
        self.units = st_in.shape[2]
        self.is_aec = len(signals_in) == 2
        self._indices = {"signal": signals_in[0].index, "state_in": st_in.index,
                         "state_out": st_out.index, "out": signals_out[0].index}
        if self.is_aec:
            self._indices["far"] = signals_in[1].index
        for role, index in self._indices.items():
            setattr(self, role, self._view(index))
        if not self.is_aec:
            self.far = None
        self.input_names = [t.name for t in signals_in]
        raw = getattr(self.interpreter, "_interpreter", None)
        self.invoke: Callable[[], Any] = getattr(raw, "Invoke", None) or self._invoke_unsupported

    def _view(self, index: int) -> np.ndarray:
        arr = self.interpreter.tensor(index)()
        if arr.dtype != np.float32:
            raise ModelError(f"{self.path.name}: tensor {index} is {arr.dtype}, not float32: "
                             "fully integer-quantized models are not supported")
        return arr.reshape(-1)

    def check_views(self) -> None:
        """Fail if the runtime has moved a buffer the engine holds a view on."""
        for role, index in self._indices.items():
            fresh = self.interpreter.tensor(index)()
            moved = fresh.ctypes.data != getattr(self, role).ctypes.data
            del fresh
            if moved:
                raise ModelError(f"{self.path.name}: the runtime moved its {role} tensor "
                                 "between calls: use runtime ai-edge-litert")

    def _invoke_unsupported(self) -> None:
        raise ModelError("this TF-Lite runtime has no raw Invoke: use runtime ai-edge-litert")

    def reset(self) -> None:
        self.state_in.fill(0.0)


class ModelPair:
    """Model 1 (mask estimator, 257 bins) and model 2 (block stage, 512 samples).

    ``kind`` is ``"ns"`` or ``"aec"``, read off the tensors.  ``mask_is_gain``
    is False for pairs whose model 1 already multiplies the mask into the
    magnitude (PiDTLN2); the engine then divides by the magnitude.
    """

    def __init__(self, name: str, path1: Path, path2: Path, runtime: str = "auto",
                 threads: int = 1) -> None:
        self.name = name
        self.runtime, cls = load_runtime(runtime)
        self.m1 = BoundModel(path1, cls, threads, BINS)
        self.m2 = BoundModel(path2, cls, threads, BLOCK)
        if self.m1.is_aec != self.m2.is_aec:
            kinds = lambda m: "echo-cancellation" if m.is_aec else "noise-suppression"  # noqa: E731
            raise ModelError(
                f"{path1.name} is a {kinds(self.m1)} model 1 but {path2.name} is a {kinds(self.m2)} "
                "model 2: the two files come from different pairs"
            )
        if self.m1.state_shape != self.m2.state_shape:
            raise ModelError(
                f"{path1.name} has LSTM states {list(self.m1.state_shape)} but {path2.name} has "
                f"{list(self.m2.state_shape)}: the two files come from different pairs"
            )
        self.kind = "aec" if self.m1.is_aec else "ns"
        self.mask_is_gain = self._probe_mask()
        self._check_stable_buffers()
        self.reset()

    @classmethod
    def load(cls, name: str, model_dir: Optional[Path] = None, runtime: str = "auto",
             threads: int = 1) -> "ModelPair":
        p1, p2 = find_pair(name, model_dir)
        return cls(name, p1, p2, runtime, threads)

    def _probe_mask(self) -> bool:
        """True when model 1 outputs a 0..1 gain, False for a masked magnitude.

        Tensor names do not say which (both are ``Identity``/``...:0``), so
        model 1 is run once from zero state on a loud broadband magnitude: a
        sigmoid mask stays within [0, 1], a masked magnitude of 1000 does not.
        """
        m1 = self.m1
        m1.reset()
        m1.signal.fill(1000.0)
        if m1.far is not None:
            m1.far.fill(0.0)
        m1.invoke()
        return float(m1.out.max()) <= 1.0 + 1e-3

    def _check_stable_buffers(self) -> None:
        for m in (self.m1, self.m2):
            m.invoke()
            m.check_views()

    def reset(self) -> None:
        """Zero both models' LSTM states (start of stream, or after a gap)."""
        self.m1.reset()
        self.m2.reset()

    @property
    def units(self) -> int:
        return self.m1.units


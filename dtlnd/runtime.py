"""Model pairs: load the two files of a pair and bind every tensor by role.

A DTLN pair is two models whose LSTM states are explicit input and output
tensors.  `dtlnd.pairs.locate` finds the files; TF-Lite files run on one of
the TF-Lite runtimes, ONNX files on onnxruntime (`dtlnd.ortmodel`); roles
come from `dtlnd.binding`, never from positions.

The engine keeps numpy views on the models' own buffers for the life of a
pair and calls ``invoke`` directly.  For TF-Lite that is the wrapper's raw
``Invoke``: the public ``invoke()`` refuses to run while such views exist (a
guard against ``allocate_tensors()`` moving the buffers, which never happens
after binding).  `ModelPair` checks once that the buffers do not move.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from . import pairs
from .binding import Model, Tensor, assign_roles
from .constants import BINS, BLOCK, MODEL_FORMATS, RUNTIMES
from .errors import ModelError, remedied
from .ortmodel import OnnxModel

#: The TF-Lite runtimes in the order ``auto`` tries them, with the module
#: that holds their ``Interpreter`` class.
TFLITE_RUNTIMES: dict[str, str] = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
#: The runtime of ONNX files.
ONNX_RUNTIME = "onnxruntime"
assert ("auto", *TFLITE_RUNTIMES, ONNX_RUNTIME) == RUNTIMES, "constants.RUNTIMES and runtime disagree"

_TFLITE_MAGIC = b"TFL3"

log = logging.getLogger("dtlnd")


def formats_for(runtime: str) -> tuple[str, ...]:
    """The file forms a runtime setting can load, in the order they are looked for."""
    if runtime == "auto":
        return MODEL_FORMATS
    return ("onnx",) if runtime == ONNX_RUNTIME else ("tflite",)


def load_runtime(name: str = "auto", fmt: str = "tflite") -> tuple[str, Any]:
    """Return ``(runtime name, Interpreter class)``, or for ``fmt`` onnx
    ``("onnxruntime", the onnxruntime module)``.

    ``auto`` takes the first runtime for ``fmt`` that imports; a named one
    must import or the error says why (e.g. tflite-runtime 2.14 next to numpy 2).
    """
    if name not in RUNTIMES:
        raise ModelError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)}")
    if (fmt == "onnx") != (name == ONNX_RUNTIME) and name != "auto":
        use = "runtime onnxruntime or auto" if fmt == "onnx" else "a TF-Lite runtime or auto"
        raise ModelError(f"runtime {name} cannot load {'ONNX' if fmt == 'onnx' else 'TF-Lite'} files: use {use}")
    if fmt == "onnx":
        try:
            return ONNX_RUNTIME, importlib.import_module("onnxruntime")
        except Exception as exc:  # ImportError, or numpy ABI errors at import
            raise ModelError(f"runtime onnxruntime is not usable ({type(exc).__name__}: {exc})".splitlines()[0]
                             + ": pip install onnxruntime (x86-64 and aarch64 only)") from None
    reasons = []
    for rt, module in TFLITE_RUNTIMES.items():
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
    for rt in RUNTIMES[1:]:
        try:
            load_runtime(rt, formats_for(rt)[0])
        except ModelError:
            continue
        found.append(rt)
    return found


def find_pair(name: str, model_dir: Optional[Path] = None, runtime: str = "auto") -> pairs.Location:
    """Where ``runtime`` would load pair ``name`` from: `dtlnd.pairs.locate`
    over the forms the runtime loads (TF-Lite before ONNX for ``auto``),
    in ``model_dir`` alone or along the model search path."""
    dirs = pairs.search_dirs(model_dir)
    formats = formats_for(runtime)
    where = pairs.locate(name, dirs, formats)
    if where is not None and where.complete:
        return where
    if where is not None:
        missing = next(p for p in where.paths if not p.is_file())
        present = "model 1" if where.paths[0].is_file() else "model 2"
        raise ModelError(f"{missing}: missing ({present} is there): run 'dtlnd models fetch {name}'")
    elsewhere = pairs.locate(name, dirs)
    if elsewhere is not None and elsewhere.complete:
        raise ModelError(f"{elsewhere.paths[0]}: pair {name!r} is there in {elsewhere.fmt} form, which runtime "
                         f"{runtime} cannot load: use runtime auto")
    searched = ", ".join(str(d) for d in dirs)
    known = pairs.pair_names(dirs, formats)
    hint = f"; pairs found: {', '.join(known)}" if known else ""
    form = " or ".join(f"{name}_1.{f}" for f in formats)
    raise remedied(ModelError, f"model {name!r} not found ({form}) in {searched}{hint}: "
                   f"run 'dtlnd models fetch {name}'", "model_dir")


class BoundModel(Model):
    """One interpreter with its tensors bound to roles.

    Attributes are flat float32 numpy views on the interpreter's buffers:
    ``signal`` (the main input: magnitude for model 1, time block for model
    2), ``far`` (the far-end input of AEC models, else None),
    ``state_in``/``state_out``, and ``out`` (mask / time block).
    """

    def __init__(self, path: Path, interpreter_cls: Any, threads: int, size: int) -> None:
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
        ins = [Tensor(d["name"], int(d["index"]), tuple(int(s) for s in d["shape"]))
               for d in self.interpreter.get_input_details()]
        outs = [Tensor(d["name"], int(d["index"]), tuple(int(s) for s in d["shape"]))
                for d in self.interpreter.get_output_details()]
        self._bind(ins, outs, size)

    def _bind(self, ins: list[Tensor], outs: list[Tensor], size: int) -> None:
        roles = assign_roles(ins, outs, size, self.path.name)
        self.state_shape = roles.state_shape
        self.units = self.state_shape[2]
        self.is_aec = roles.far is not None
        self._indices = {role: int(t.key) for role, t in roles.items()}  # type: ignore[call-overload]
        self.far = None
        for role, index in self._indices.items():
            setattr(self, role, self._view(index))
        self.input_names = [roles.signal.name] + ([roles.far.name] if roles.far is not None else [])
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

class ModelPair:
    """Model 1 (mask estimator, 257 bins) and model 2 (block stage, 512 samples).

    ``kind`` is ``"ns"`` or ``"aec"``, read off the tensors.  ``mask_is_gain``
    is False for pairs whose model 1 already multiplies the mask into the
    magnitude (PiDTLN2); the engine then divides by the magnitude.
    """

    def __init__(self, name: str, path1: Path, path2: Path, runtime: str = "auto",
                 threads: int = 1) -> None:
        self.name = name
        fmt = "onnx" if path1.suffix == ".onnx" else "tflite"
        self.runtime, loader = load_runtime(runtime, fmt)
        model: Callable[..., Model] = OnnxModel if fmt == "onnx" else BoundModel
        self.m1 = model(path1, loader, threads, BINS)
        self.m2 = model(path2, loader, threads, BLOCK)
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
             threads: int = 1) -> ModelPair:
        """Find the pair as `find_pair` does and load it.  Under ``auto``, a
        TF-Lite pair with no TF-Lite runtime importable runs in its ONNX form
        when that is installed too."""
        where = find_pair(name, model_dir, runtime)
        if runtime == "auto" and where.fmt == "tflite":
            try:
                load_runtime("auto", "tflite")
            except ModelError:
                onnx = pairs.locate(name, pairs.search_dirs(model_dir), ("onnx",))
                if onnx is not None and onnx.complete:
                    where = onnx
        p1, p2 = where.paths
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


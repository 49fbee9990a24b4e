"""One ONNX model run by onnxruntime, with the interface of a TF-Lite one.

The engine holds numpy views ``signal, far, state_in, state_out, out`` and
calls ``invoke()`` once per 8 ms block.  Here those views are buffers this
class owns; each is wrapped once in an ``OrtValue`` (which shares the numpy
memory) and bound with I/O binding, inputs and outputs alike, so a run
reads the engine's inputs where they are and writes the outputs straight
into the engine's buffers: no copy and no allocation per block.
`OnnxModel.check_views` proves that at load time.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .binding import Model, Tensor, assign_roles
from .errors import ModelError

_FLOAT = "tensor(float)"


def _shape(dims: list[Any]) -> tuple[int, ...]:
    """A static shape; a symbolic dimension (batch, frames) is one block: 1."""
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)


class OnnxModel(Model):
    """An onnxruntime session with every tensor bound to a role, as
    `dtlnd.runtime.BoundModel` is for TF-Lite."""

    def __init__(self, path: Path, ort: ModuleType, threads: int, size: int) -> None:
        self.path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: warnings would turn one-line errors into many
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not path.is_file():
                raise ModelError(f"{path}: cannot read it: check the path and permissions") from None
            raise ModelError(f"{path}: onnxruntime cannot load it ({first[:200]}): the file is damaged "
                             "or not an ONNX model; re-fetch it with 'dtlnd models fetch'") from None
        ins = self._tensors(self.session.get_inputs())
        outs = self._tensors(self.session.get_outputs())
        roles = assign_roles(ins, outs, size, path.name)
        self.state_shape = roles.state_shape
        self.units = self.state_shape[2]
        self.is_aec = roles.far is not None
        self.input_names = [roles.signal.name] + ([roles.far.name] if roles.far is not None else [])
        self.far = None
        self._buffers: dict[str, np.ndarray] = {}
        self._values: dict[str, Any] = {}
        self.binding = self.session.io_binding()
        for role, t in roles.items():
            buf = np.zeros(t.shape, np.float32)
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            bind = self.binding.bind_ortvalue_input if t in (roles.signal, roles.far, roles.state_in) \
                else self.binding.bind_ortvalue_output
            bind(t.name, value)
            self._buffers[role], self._values[role] = buf, value
            setattr(self, role, buf.reshape(-1))
        self.run_options = ort.RunOptions()
        self.invoke: Callable[[], Any] = self._runner()

    def _tensors(self, nodes: list[Any]) -> list[Tensor]:
        for n in nodes:
            if n.type != _FLOAT:
                raise ModelError(f"{self.path.name}: tensor {n.name} is {n.type}, not float32: "
                                 "only float ONNX models are supported")
        return [Tensor(n.name, n.name, _shape(n.shape)) for n in nodes]

    def _runner(self) -> Callable[[], Any]:
        """The bound run as one call.  The C session's own method when it is
        there: the public wrapper adds a Python frame and checks per call."""
        raw_session = getattr(self.session, "_sess", None)
        raw_binding = getattr(self.binding, "_iobinding", None)
        if raw_session is not None and raw_binding is not None and hasattr(raw_session, "run_with_iobinding"):
            return partial(raw_session.run_with_iobinding, raw_binding, self.run_options)
        return partial(self.session.run_with_iobinding, self.binding, self.run_options)

    def check_views(self) -> None:
        """Fail unless every bound OrtValue still points at the engine's buffer
        and a run writes its outputs there."""
        for role, value in self._values.items():
            if value.data_ptr() != self._buffers[role].ctypes.data:
                raise ModelError(f"{self.path.name}: onnxruntime copied the {role} buffer instead of "
                                 "sharing it: this onnxruntime version is not supported")
        out = self._buffers["out"]
        out.fill(np.nan)
        self.invoke()
        if not np.isfinite(out).all():
            raise ModelError(f"{self.path.name}: onnxruntime did not write its output into the bound "
                             "buffer: this onnxruntime version is not supported")

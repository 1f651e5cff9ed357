"""onnxruntime backend (the Jetson / x86 path).

ONNX graph inputs carry no quantisation parameters; a model with integer inputs or outputs
states them on the DequantizeLinear that reads its input and the QuantizeLinear that writes its
output, so those are read from the graph (this needs the ``onnx`` package, only for such models).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.inference.base import Backend, TensorInfo
from agent.preprocess import DEFAULT_SPEC, PreprocessSpec

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


class OnnxBackend(Backend):
    runtime = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 1,
        spec: PreprocessSpec = DEFAULT_SPEC,
        optimization: str = "all",
    ) -> None:
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        }
        if optimization not in levels:
            raise ValueError(
                f"unknown onnx optimization {optimization!r}; use one of {sorted(levels)}"
            )
        self.path = Path(model_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[optimization]
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # workers sleep between runs instead of spinning: the pipeline's own work (ROI search,
        # MQTT) comes between two inferences and a spinning worker takes its core away
        # (bench/e2e.py, onnx int8 on 2 cores: 86 -> 148 frames/s, p50 12.2 -> 6.9 ms)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        super().__init__(spec)

    def _describe(self) -> tuple[TensorInfo, TensorInfo]:
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        infos = []
        for t, role in ((i, "input"), (o, "output")):
            if t.type not in _ORT_TYPES:
                raise ValueError(f"{self.path}: {role} {t.name!r} has unsupported type {t.type}")
            shape = tuple(d if isinstance(d, int) else None for d in t.shape)
            infos.append(TensorInfo(t.name, shape, np.dtype(_ORT_TYPES[t.type])))
        if any(np.issubdtype(x.dtype, np.integer) for x in infos):
            infos = _with_graph_quantisation(self.path, infos[0], infos[1])
        return infos[0], infos[1]

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: x})[0]

    def close(self) -> None:
        self.session = None


def _with_graph_quantisation(path: Path, inp: TensorInfo, out: TensorInfo) -> list[TensorInfo]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise RuntimeError(
            f"{path} has integer inputs/outputs; reading their scale and zero point needs the "
            "'onnx' package (pip install onnx), or export the model with float inputs/outputs"
        ) from e
    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def params(op: str, io: str, name: str) -> tuple[float, int]:
        for node in graph.node:
            names = node.input if io == "input" else node.output
            if node.op_type == op and names[0] == name:
                scale = float(np.asarray(consts[node.input[1]]).reshape(-1)[0])
                zp = int(np.asarray(consts[node.input[2]]).reshape(-1)[0])
                return scale, zp
        raise ValueError(f"{path}: integer tensor {name!r} has no {op} giving its scale")

    result = []
    for info, op, io in ((inp, "DequantizeLinear", "input"), (out, "QuantizeLinear", "output")):
        if np.issubdtype(info.dtype, np.integer):
            scale, zp = params(op, io, info.name)
            info = TensorInfo(info.name, info.shape, info.dtype, scale, zp)
        result.append(info)
    return result

"""Hostile and benign model files built here (never downloaded): ONNX models whose tensors
point at external data, pickles that run code when loaded, and harmless ones."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np
from onnx import AttributeProto, ModelProto, TensorProto, helper, numpy_helper


def _external(tensor: TensorProto, location: str, length: int) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(graph: Any, opset: int = 17) -> ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def leaking_onnx(location: str = "../master.key", length: int = 16) -> bytes:
    """y = x + W where W's bytes live in the external file ``location`` (uint8[length]):
    an ONNX Runtime that follows the path returns that file's bytes (with x = 0)."""
    w = _external(
        numpy_helper.from_array(np.zeros(length, dtype=np.uint8), name="W"), location, length
    )
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [length])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "leak", [x], [y], initializer=[w]
    )
    return _model(graph).SerializeToString()


def leaking_constant_onnx(location: str = "../master.key", length: int = 16) -> bytes:
    """The same leak through a Constant node's tensor attribute."""
    value = _external(
        numpy_helper.from_array(np.zeros(length, dtype=np.uint8), name="c"), location, length
    )
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [length])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["W"], value=value),
            helper.make_node("Add", ["x", "W"], ["y"]),
        ],
        "leak-constant",
        [x],
        [y],
    )
    return _model(graph).SerializeToString()


def leaking_subgraph_onnx(location: str = "../master.key", length: int = 16) -> bytes:
    """The leak hidden in the then-branch of an If node (a subgraph's initializer)."""
    w = _external(
        numpy_helper.from_array(np.zeros(length, dtype=np.uint8), name="W"), location, length
    )
    out = helper.make_tensor_value_info("branch_out", TensorProto.UINT8, [length])
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["branch_out"])], "then", [], [out], initializer=[w]
    )
    else_out = helper.make_tensor_value_info("else_out", TensorProto.UINT8, [length])
    zero = numpy_helper.from_array(np.zeros(length, dtype=np.uint8), name="Z")
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["Z"], ["else_out"])], "else", [], [else_out],
        initializer=[zero],
    )  # fmt: skip
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [length])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)
    return _model(helper.make_graph([node], "leak-if", [cond], [y])).SerializeToString()


def leaking_sparse_onnx(location: str = "../master.key") -> bytes:
    """The leak through a sparse initializer's values."""
    values = _external(
        numpy_helper.from_array(np.zeros(2, dtype=np.float32), name="S"), location, 8
    )
    indices = numpy_helper.from_array(np.array([0, 1], dtype=np.int64), name="S_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "S"], ["y"])], "leak-sparse", [x], [y])
    graph.sparse_initializer.append(sparse)
    return _model(graph).SerializeToString()


def onnx_with_opset(version: int, domain: str = "") -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, version))
    else:
        model.opset_import[0].version = version
    model.ir_version = 8
    return model.SerializeToString()


def ep_context_onnx(cache_file: str = "../master.key") -> bytes:
    """An EPContext node naming a cache file outside the model (embed_mode=0)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node(
        "EPContext", ["x"], ["y"], domain="com.microsoft", embed_mode=0,
        ep_cache_context=cache_file,
    )  # fmt: skip
    graph = helper.make_graph([node], "ep", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()


def no_input_onnx() -> bytes:
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    value = numpy_helper.from_array(np.ones(1, dtype=np.float32), name="v")
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], value=value)], "c", [], [y])
    return _model(graph).SerializeToString()


_ = AttributeProto  # keep the onnx import list explicit


class _System:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned > /tmp/cyxwiz-pwned",))


class _Eval:
    def __reduce__(self) -> Any:
        return (eval, ("__import__('os').system('true')",))


def evil_pickle(protocol: int = 4, *, via: str = "system") -> bytes:
    """A pickle that runs a shell command (or eval) when loaded; never load it."""
    return pickle.dumps(_System() if via == "system" else _Eval(), protocol=protocol)


def benign_pickle(protocol: int = 4) -> bytes:
    return pickle.dumps(
        {"weights": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": ["a", "b"]},
        protocol=protocol,
    )


def torch_zip(data_pkl: bytes) -> bytes:
    """A zip laid out as torch.save's format (archive/data.pkl + raw storages)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", np.arange(16, dtype=np.float32).tobytes())
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def safetensors_file() -> bytes:
    import json
    import struct

    data = np.arange(4, dtype=np.float32).tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]}})
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def unservable_onnx() -> bytes:
    """A valid ONNX file (it passes the publish checks) using an operator no ONNX Runtime
    implements: a node cannot build a session from it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="com.microsoft")
    model = helper.make_model(
        helper.make_graph([node], "unservable", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()

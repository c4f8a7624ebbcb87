"""ONNX files checked from bytes in memory, never from a path and never with their external data.

An ONNX tensor may keep its bytes in an "external data" file named by a path; ONNX Runtime
resolves that path against the model's folder or, for a model loaded from bytes, the process's
working directory. A published model could so read any file of an inference node (its master
key, its database). Every tensor of every graph is therefore checked to hold its data inline.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cyxwiz.errors import InvalidInput

# Opset domains a model may import; each one's highest version is what the installed ONNX
# Runtime accepts (probed once, see ``supported_opsets``).
KNOWN_DOMAINS = ("", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")
# Operators that make ONNX Runtime read a file named inside the model (an EPContext node with
# ``embed_mode=0`` names a cache file in ``ep_cache_context``).
FORBIDDEN_OPS = frozenset({("com.microsoft", "EPContext")})
_PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot be larger


class FileRefused(InvalidInput):
    """A model file the marketplace or a node will not accept; ``code`` says why."""

    code = "invalid_model_file"
    status = 422
    title = "Model file refused"


@dataclass(frozen=True)
class OnnxSummary:
    """What a valid ONNX file declares (kept as the file's scan details)."""

    ir_version: int
    opsets: dict[str, int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "nodes": self.nodes,
        }


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name


def _probe(domain: str, version: int, ir_version: int = 8) -> bool:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", 13)]
    if domain:
        opsets.append(helper.make_opsetid(domain, version))
    else:
        opsets = [helper.make_opsetid("", version)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(
            model.SerializeToString(),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
    except Exception:
        return False
    return True


def _highest(ok: Any, lo: int, hi: int) -> int:
    """The highest v in [lo, hi] with ok(v), assuming ok holds up to some v (0 if none)."""
    if not ok(lo):
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


@functools.cache
def supported_opsets() -> dict[str, int]:
    """The highest opset version the installed ONNX Runtime loads, per known domain."""
    return {d: _highest(lambda v, d=d: _probe(d, v), 1 if d else 7, 128) for d in KNOWN_DOMAINS}


@functools.cache
def supported_ir_version() -> int:
    """The highest ONNX IR version the installed ONNX Runtime loads."""
    return _highest(lambda v: _probe("", 13, v), 7, 64)


def _graphs_of_node(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _tensors_of_node(node: Any) -> Iterator[tuple[str, Any]]:
    for attr in node.attribute:
        where = f"attribute {attr.name!r} of node {node.name or node.op_type!r}"
        if attr.HasField("t"):
            yield where, attr.t
        for t in attr.tensors:
            yield where, t
        sparse = list(attr.sparse_tensors)
        if attr.HasField("sparse_tensor"):
            sparse.append(attr.sparse_tensor)
        for s in sparse:
            yield where, s.values
            yield where, s.indices


def _walk_graph(graph: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """(where, tensor or None, node or None) for every tensor and node of a graph and its
    subgraphs (If/Loop/Scan bodies), recursively."""
    for t in graph.initializer:
        yield f"initializer {t.name!r} of {where}", t, None
    for s in graph.sparse_initializer:
        yield f"sparse initializer {s.values.name!r} of {where}", s.values, None
        yield f"sparse initializer {s.values.name!r} of {where}", s.indices, None
    for node in graph.node:
        yield where, None, node
        for w, t in _tensors_of_node(node):
            yield f"{w} in {where}", t, None
        for sub in _graphs_of_node(node):
            yield from _walk_graph(
                sub, f"subgraph {sub.name!r} of node {node.name or node.op_type!r}"
            )


def walk_model(model: Any) -> Iterator[tuple[str, Any, Any]]:
    """Every tensor and node of a ModelProto: the main graph, its subgraphs, the model's local
    functions and any training-info graphs."""
    yield from _walk_graph(model.graph, f"graph {model.graph.name!r}")
    for fn in model.functions:
        for node in fn.node:
            yield f"function {fn.name!r}", None, node
            for w, t in _tensors_of_node(node):
                yield f"{w} in function {fn.name!r}", t, None
            for sub in _graphs_of_node(node):
                yield from _walk_graph(sub, f"subgraph of function {fn.name!r}")
    for info in model.training_info:
        yield from _walk_graph(info.initialization, "training initialization graph")
        yield from _walk_graph(info.algorithm, "training algorithm graph")


def _external(tensor: Any) -> str | None:
    """The external-data location a tensor names, or None if its data is inline."""
    from onnx import TensorProto

    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
        for entry in tensor.external_data:
            if entry.key == "location":
                return entry.value or "(empty)"
        return "(no location)"
    return None


def check_onnx_bytes(data: bytes, *, path: str) -> OnnxSummary:
    """Parse ``data`` as an ONNX model WITHOUT loading external data and check that ONNX
    Runtime may open it safely: it parses and passes ``onnx.checker``, no tensor anywhere
    refers to external data, no forbidden operator, opsets and IR version within what the
    installed ONNX Runtime supports, at least one graph input and output.

    Raises FileRefused (422) with code ``invalid_model_file``, ``onnx_external_data``,
    ``onnx_forbidden_op`` or ``onnx_unsupported_opset``.
    """
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    if len(data) > _PROTOBUF_LIMIT:
        raise FileRefused(
            f"{path}: an ONNX file larger than 2 GiB needs external data, which is not "
            "accepted; only self-contained ONNX files are served",
            code="onnx_external_data",
            path=path,
        )
    if not data:
        raise FileRefused(f"{path}: an empty file is not an ONNX model", path=path)
    try:
        model = onnx.load_model_from_string(data)  # never loads external data
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FileRefused(
            f"{path} is not a valid ONNX model (it does not parse: {str(exc)[:200]})", path=path
        ) from None
    if not model.HasField("graph") or not model.opset_import:
        raise FileRefused(
            f"{path} is not a valid ONNX model (no graph or no opset import)", path=path
        )
    nodes = 0
    for where, tensor, node in walk_model(model):
        if tensor is not None:
            location = _external(tensor)
            if location is not None:
                raise FileRefused(
                    f"{path}: {where} keeps its data in an external file ({location!r}); "
                    "external data is not accepted (it would make a node read files on its "
                    "host): save the model with all tensors inside the .onnx file",
                    code="onnx_external_data",
                    path=path,
                    location=location,
                )
        if node is not None:
            nodes += 1
            if (_domain(node.domain), node.op_type) in FORBIDDEN_OPS:
                raise FileRefused(
                    f"{path}: operator {node.domain}.{node.op_type} is not accepted (it makes "
                    "the runtime read files named inside the model)",
                    code="onnx_forbidden_op",
                    path=path,
                )
    supported = supported_opsets()
    opsets: dict[str, int] = {}
    for op in model.opset_import:
        domain = _domain(op.domain)
        highest = supported.get(domain, 0)
        if not 1 <= op.version <= highest:
            raise FileRefused(
                f"{path}: opset {op.domain or 'ai.onnx'} version {op.version} is not supported "
                f"by this platform's ONNX Runtime (supported: "
                + ", ".join(f"{d or 'ai.onnx'} ≤ {v}" for d, v in supported.items() if v)
                + ")",
                code="onnx_unsupported_opset",
                path=path,
            )
        opsets[op.domain or "ai.onnx"] = int(op.version)
    if not 3 <= model.ir_version <= supported_ir_version():
        raise FileRefused(
            f"{path}: ONNX IR version {model.ir_version} is not supported "
            f"(this platform's ONNX Runtime reads up to {supported_ir_version()})",
            code="onnx_unsupported_opset",
            path=path,
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise FileRefused(
            f"{path} is not a valid ONNX model: {str(exc).strip()[:300]}", path=path
        ) from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(i.name for i in model.graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in model.graph.output)
    if not inputs or not outputs:
        raise FileRefused(
            f"{path}: an ONNX model needs at least one graph input and one graph output "
            f"(it has {len(inputs)} inputs and {len(outputs)} outputs)",
            path=path,
        )
    return OnnxSummary(
        ir_version=int(model.ir_version),
        opsets=opsets,
        inputs=inputs,
        outputs=outputs,
        nodes=nodes,
    )

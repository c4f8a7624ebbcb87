"""Open Inference Protocol (KServe v2) JSON tensors: datatypes, validation, encoding.

Pure numpy: no I/O, no web framework. ``decode_inputs`` turns a request body into an ONNX
Runtime feed, checking every input against the model's own input metadata, and raises
``ProtocolError`` (a 4xx with a clear message) for anything that does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# ONNX Runtime type strings -> OIP datatypes
ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
OIP_TO_NUMPY: dict[str, npt.DTypeLike] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}
_NUMPY_KIND_TO_OIP = {
    np.dtype(v).str: k for k, v in OIP_TO_NUMPY.items() if k != "BYTES"
}  # e.g. '<f4' -> FP32
# Which JSON-decoded numpy kinds each datatype accepts (ints may feed floats, never reverse).
_ACCEPTS: dict[str, str] = {
    "BOOL": "b",
    "FP16": "fiu",
    "FP32": "fiu",
    "FP64": "fiu",
}
MAX_ELEMENTS = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A request the model cannot take: ``status`` 400 unless said otherwise."""

    def __init__(self, detail: str, *, code: str = "invalid_input", status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: OIP datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, arg: Any) -> TensorSpec | None:
        """The spec of an ONNX Runtime NodeArg, None for non-tensor types (sequences, maps)."""
        datatype = ORT_TO_OIP.get(arg.type)
        if datatype is None:
            return None
        dims = arg.shape if isinstance(arg.shape, (list, tuple)) else []
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
        return cls(name=arg.name, datatype=datatype, shape=shape)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _flatten_strings(data: Any, out: list[str], name: str) -> None:
    for item in data:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            _flatten_strings(item, out, name)
        else:
            raise ProtocolError(f"input {name!r} is BYTES: data must hold strings")


def _decode_one(raw: Any, spec: TensorSpec) -> npt.NDArray[Any]:
    name = spec.name
    datatype = raw.get("datatype")
    if datatype != spec.datatype:
        raise ProtocolError(
            f"input {name!r} must have datatype {spec.datatype}, got {datatype!r}",
            code="wrong_datatype",
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(
            f"input {name!r}: shape must be a list of non-negative integers", code="wrong_shape"
        )
    expected = list(spec.shape)
    if len(shape) != len(expected) or any(
        e != -1 and e != d for e, d in zip(expected, shape, strict=True)
    ):
        want = "[" + ", ".join("-1" if e == -1 else str(e) for e in expected) + "]"
        raise ProtocolError(
            f"input {name!r} must have shape {want} (-1 = any size), got {shape}",
            code="wrong_shape",
        )
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(
            f"input {name!r} has {count} elements; at most {MAX_ELEMENTS}",
            status=413,
            code="payload_too_large",
        )
    data = raw.get("data")
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: data must be a JSON array")
    if spec.datatype == "BYTES":
        flat: list[str] = []
        _flatten_strings(data, flat, name)
        if len(flat) != count:
            raise ProtocolError(
                f"input {name!r}: shape {shape} needs {count} elements, data holds {len(flat)}",
                code="wrong_shape",
            )
        return np.array(flat, dtype=object).reshape(shape)
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise ProtocolError(
            f"input {name!r}: data must be a flat or evenly nested array of numbers"
        ) from None
    if arr.size != count:
        raise ProtocolError(
            f"input {name!r}: shape {shape} needs {count} elements, data holds {arr.size}",
            code="wrong_shape",
        )
    accepts = _ACCEPTS.get(spec.datatype, "iu")
    if arr.size and arr.dtype.kind not in accepts:
        what = {"b": "booleans", "f": "numbers", "iu": "integers", "fiu": "numbers"}[accepts]
        raise ProtocolError(
            f"input {name!r} is {spec.datatype}: data must hold {what}", code="wrong_datatype"
        )
    target = np.dtype(OIP_TO_NUMPY[spec.datatype])
    if arr.dtype.kind in "iu" and target.kind in "iu":
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ProtocolError(
                f"input {name!r}: values out of range for {spec.datatype}", code="wrong_datatype"
            )
    with np.errstate(all="ignore"):
        return np.asarray(arr, dtype=target).reshape(shape)


def decode_inputs(body: Any, specs: Sequence[TensorSpec]) -> dict[str, npt.NDArray[Any]]:
    """The ORT feed for an OIP request body; every model input present exactly once."""
    if not isinstance(body, Mapping):
        raise ProtocolError("request body must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty array of tensors")
    by_name = {s.name: s for s in specs}
    feed: dict[str, npt.NDArray[Any]] = {}
    for raw in inputs:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise ProtocolError("each input must be an object with name, shape, datatype, data")
        name = raw["name"]
        spec = by_name.get(name)
        if spec is None:
            raise ProtocolError(
                f"unknown input {name!r}; the model takes {sorted(by_name)}", code="unknown_input"
            )
        if name in feed:
            raise ProtocolError(f"input {name!r} is given twice")
        params = raw.get("parameters")
        if isinstance(params, Mapping) and "binary_data_size" in params:
            raise ProtocolError(
                "binary tensor data is not supported; send the tensor as JSON 'data'",
                code="binary_tensors_unsupported",
            )
        feed[name] = _decode_one(raw, spec)
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise ProtocolError(f"missing inputs {missing}", code="missing_input")
    return feed


def requested_outputs(body: Mapping[str, Any], specs: Sequence[TensorSpec]) -> list[str]:
    """The output names asked for (all tensor outputs when the request names none)."""
    wanted = body.get("outputs")
    if wanted is None:
        return [s.name for s in specs]
    if not isinstance(wanted, list):
        raise ProtocolError("'outputs' must be an array of {name}")
    known = {s.name for s in specs}
    names: list[str] = []
    for item in wanted:
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or name not in known:
            raise ProtocolError(
                f"unknown output {name!r}; the model gives {sorted(known)}", code="unknown_output"
            )
        if name not in names:
            names.append(name)
    return names or [s.name for s in specs]


def datatype_of(arr: npt.NDArray[Any]) -> str:
    if arr.dtype.kind in "OUS":
        return "BYTES"
    found = _NUMPY_KIND_TO_OIP.get(arr.dtype.str)
    if found is None:
        raise ProtocolError(f"no OIP datatype for numpy {arr.dtype}", status=500, code="bad_output")
    return found


def encode_output(name: str, value: Any) -> dict[str, Any]:
    """An ORT output as an OIP JSON tensor (data flattened in row-major order)."""
    arr = np.asarray(value)
    datatype = datatype_of(arr)
    flat = arr.ravel()
    if datatype == "BYTES":
        data: list[Any] = [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    else:
        data = flat.tolist()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def decode_output(tensor: Mapping[str, Any]) -> npt.NDArray[Any]:
    """An OIP JSON output tensor back to a numpy array of its datatype and shape."""
    datatype = tensor.get("datatype")
    if datatype not in OIP_TO_NUMPY:
        raise ProtocolError(f"output {tensor.get('name')!r} has unknown datatype {datatype!r}")
    shape = tensor.get("shape") or []
    if datatype == "BYTES":
        return np.array(list(tensor.get("data") or []), dtype=object).reshape(shape)
    return np.asarray(tensor.get("data") or [], dtype=OIP_TO_NUMPY[str(datatype)]).reshape(shape)

"""Warm models: ONNX Runtime sessions built from decrypted bytes in memory, kept in an LRU
bounded by total model bytes, loaded once however many requests arrive for them at once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cyxwiz.errors import IntegrityError
from cyxwiz.inference.oip import TensorSpec
from cyxwiz.scanning import FileRefused, check_onnx_bytes
from cyxwiz.storage.crypto import decrypt_stream

log = logging.getLogger("cyxwiz.node")
READ_PIECE = 1024 * 1024
# A run expected to take less than this runs on the event loop: handing it to a worker thread
# costs about 300 µs of wall time here, far more than a small model's run (about 10 µs).
INLINE_BUDGET_SECONDS = 250e-6
_EWMA = 0.2


class RunCost:
    """Measured cost of a model's runs: an EWMA of seconds per input element."""

    def __init__(self) -> None:
        self.per_element: float | None = None  # None until the first run is measured

    def inline(self, elements: int) -> bool:
        """Whether a run over ``elements`` input elements is cheap enough for the loop."""
        c = self.per_element
        return c is not None and c * max(elements, 1) < INLINE_BUDGET_SECONDS

    def record(self, elements: int, seconds: float) -> None:
        sample = seconds / max(elements, 1)
        c = self.per_element
        self.per_element = sample if c is None else c + _EWMA * (sample - c)


class LoadError(Exception):
    """A model could not be made ready; ``status``/``code`` go to the caller as is."""

    def __init__(self, detail: str, *, status: int, code: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code


@dataclass
class LoadedModel:
    """A ready ONNX Runtime session and what the protocol needs to know about it."""

    name: str  # the version id the gateway addresses it by
    model: str  # owner/name
    version: str  # the version label
    session: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size: int  # plaintext ONNX bytes (what the LRU budget counts)
    properties: dict[str, str] = field(default_factory=dict)  # cyxwiz.* ONNX metadata
    metadata_body: bytes = b""
    cost: RunCost = field(default_factory=RunCost)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def run(self, names: list[str], feed: dict[str, Any], elements: int) -> list[Any]:
        """Run the session and record how long it took (thread-safe enough: one float)."""
        start = time.perf_counter()
        out: list[Any] = self.session.run(names, feed)
        self.cost.record(elements, time.perf_counter() - start)
        return out


def decrypt_verified(pieces: Iterable[bytes], data_key: bytes, address: str, size: int) -> bytes:
    """The plaintext of a stored blob, authenticated chunk by chunk and checked against its
    address (sha256) and size; IntegrityError otherwise. Runs in a worker thread."""
    plaintext = b"".join(decrypt_stream(pieces, data_key, address))
    if len(plaintext) != size or hashlib.sha256(plaintext).hexdigest() != address:
        raise IntegrityError(f"blob {address}: decrypted bytes do not match the manifest")
    return plaintext


def prepare_workdir(path: Path) -> Path:
    """Create (0700) or empty the node's private working folder and return its real path.

    It must be ours, a real directory (not a symlink) and hold nothing: ONNX Runtime resolves
    any file a model names against it, so it must offer nothing to read."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise RuntimeError(f"{path} must be a directory owned by this user")
    os.chmod(path, 0o700)
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    return path.resolve()


def enter_workdir(path: Path) -> Path:
    """Make the (emptied, private) ``path`` this process's working directory, so nothing a
    model or library resolves relative to it can reach the operator's files."""
    real = prepare_workdir(path)
    os.chdir(real)
    return real


def session_options(*, intra_op_threads: int, workdir: Path) -> Any:
    """ORT session options that restrict what a session may touch (docs/scanning.md).

    - ``session.model_external_initializers_file_folder_path``: a model loaded from bytes
      resolves external-data paths against this folder (the empty private workdir) instead
      of the process's working directory; ORT also refuses absolute and escaping paths.
    - ``session.load_model_format=ONNX``: the bytes are parsed as ONNX only, never as an ORT
      format flatbuffer the checks did not look at.
    - ``session.allow_released_opsets_only=1``: no opsets still under development.
    - no profiling and no optimized-model file: a session writes nothing to disk.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.enable_profiling = False
    options.optimized_model_filepath = ""
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(workdir)
    )
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("session.allow_released_opsets_only", "1")
    return options


def build_model(
    *,
    name: str,
    model: str,
    version: str,
    model_bytes: bytes,
    intra_op_threads: int,
    workdir: Path,
    path: str = "model.onnx",
) -> LoadedModel:
    """An ORT session from bytes in memory (nothing is written to disk), opened only after
    the bytes pass ``check_onnx_bytes`` here (a node never trusts the marketplace's check)."""
    import onnxruntime as ort

    try:
        check_onnx_bytes(model_bytes, path=path)
    except FileRefused as exc:
        raise LoadError(exc.detail, status=422, code=exc.code) from None
    options = session_options(intra_op_threads=intra_op_threads, workdir=workdir)
    session = ort.InferenceSession(
        model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )
    inputs = tuple(s for s in map(TensorSpec.of, session.get_inputs()) if s is not None)
    if len(inputs) != len(session.get_inputs()):
        raise LoadError(
            "the model has non-tensor inputs, which the protocol cannot carry",
            status=422,
            code="model_not_servable",
        )
    outputs = tuple(s for s in map(TensorSpec.of, session.get_outputs()) if s is not None)
    meta = session.get_modelmeta().custom_metadata_map
    properties = {k: v for k, v in sorted(meta.items()) if k.startswith("cyxwiz.")}
    loaded = LoadedModel(
        name=name,
        model=model,
        version=version,
        session=session,
        inputs=inputs,
        outputs=outputs,
        size=len(model_bytes),
        properties=properties,
    )
    loaded.metadata_body = json.dumps(
        {
            "name": name,
            "versions": [version],
            "platform": "onnxruntime",
            "inputs": [s.as_json() for s in inputs],
            "outputs": [s.as_json() for s in outputs],
            "parameters": {"model": model, "version": version, "properties": properties},
        },
        separators=(",", ":"),
    ).encode()
    return loaded


class ModelRegistry:
    """Warm models by name, least recently used evicted first once over ``max_bytes``.

    ``get`` loads a cold model through ``loader``; concurrent callers for the same model
    share one load. A failed load is not remembered (the next call tries again).
    """

    def __init__(self, *, max_bytes: int, loader: Callable[[str], Awaitable[LoadedModel]]):
        self.max_bytes = max_bytes
        self._loader = loader
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedModel]] = {}
        self.loads = 0  # loads started (a statistic: concurrent requests share one)

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self._models.values())

    def warm(self) -> list[str]:
        """Names of the warm models, most recently used last."""
        return list(self._models)

    def peek(self, name: str) -> LoadedModel | None:
        model = self._models.get(name)
        if model is not None:
            self._models.move_to_end(name)
        return model

    async def get(self, name: str) -> LoadedModel:
        model = self.peek(name)
        if model is not None:
            return model
        pending = self._loading.get(name)
        if pending is None:
            self.loads += 1
            pending = asyncio.ensure_future(self._load(name))
            # every waiter may have gone (clients disconnected): still consume the outcome
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._loading[name] = pending
        return await asyncio.shield(pending)

    async def _load(self, name: str) -> LoadedModel:
        try:
            model = await self._loader(name)
            self._admit(model)
            return model
        finally:
            del self._loading[name]

    def _admit(self, model: LoadedModel) -> None:
        if model.size > self.max_bytes:
            raise LoadError(
                f"the model needs {model.size} bytes; this node keeps at most "
                f"{self.max_bytes} bytes of models",
                status=503,
                code="model_too_large",
            )
        total = self.total_bytes + model.size
        for old in list(self._models):
            if total <= self.max_bytes:
                break
            total -= self._models.pop(old).size
            log.info("evicted warm model %s", old)
        self._models[model.name] = model

    def evict_all(self) -> None:
        self._models.clear()

"""The node agent's configuration (CLI options / ``CYXWIZ_NODE_*`` environment variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cyxwiz import __version__

GIB = 1024**3
MIB = 1024**2


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cyxwiz" / "node"


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node agent needs; ``token`` is the node token (cxw_nt_...)."""

    marketplace_url: str
    token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8801
    advertise_url: str | None = None  # where the gateway reaches us; default http://host:port
    cache_dir: Path = field(default_factory=default_cache_dir)
    max_model_bytes: int = 2 * GIB  # warm models kept in memory (plaintext ONNX bytes)
    max_cache_bytes: int = 20 * GIB  # encrypted blobs kept on disk
    max_request_bytes: int = 16 * MIB  # an infer request body; larger gets 413
    capacity: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    intra_op_threads: int = 1  # ORT threads per request; parallelism comes from capacity
    marketplace_timeout: float = 30.0
    heartbeat_seconds: float | None = None  # override the marketplace's interval (tests)
    agent_version: str = f"cyxwiz-node/{__version__}"
    # An empty private folder (0700) that ONNX Runtime resolves any file path against and that
    # `cyxwiz node` makes its working directory; default <cache_dir>/work.
    work_dir: Path | None = None

    @property
    def workdir(self) -> Path:
        return self.work_dir or self.cache_dir / "work"

    @property
    def url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

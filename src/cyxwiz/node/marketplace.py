"""The node's calls to the marketplace (httpx, authenticated with the node token)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx


class MarketplaceError(Exception):
    """The marketplace refused a call (``status`` and problem ``code``) or could not be
    reached (``status`` 0)."""

    def __init__(self, detail: str, *, status: int = 0, code: str = "marketplace_unavailable"):
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    address: str
    stored_size: int
    data_key: bytes = b""  # held in memory only

    def __repr__(self) -> str:  # never print a key
        return f"RemoteFile({self.path!r}, size={self.size}, address={self.address!r})"


@dataclass(frozen=True)
class Manifest:
    version_id: uuid.UUID
    model: str
    version: str
    entrypoint: str | None
    files: tuple[RemoteFile, ...]

    def file(self, path: str) -> RemoteFile | None:
        return next((f for f in self.files if f.path == path), None)


class MarketplaceClient:
    """Register, heartbeat, fetch manifests and stream encrypted blobs."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "cyxwiz-node"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MarketplaceError(f"marketplace unreachable: {exc!r}") from None
        if r.status_code >= 400:
            raise _error(r)
        return r.json()

    async def register(self, *, url: str, capacity: int, agent_version: str) -> dict[str, Any]:
        body = {"url": url, "capacity": capacity, "agent_version": agent_version}
        out: dict[str, Any] = await self._call("POST", "/nodes/register", json=body)
        return out

    async def heartbeat(self, *, load: int, warm: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = await self._call(
            "POST", "/nodes/heartbeat", json={"load": load, "warm": warm}
        )
        return out

    async def manifest(self, version_id: str) -> Manifest:
        data = await self._call("GET", f"/nodes/assignments/{version_id}")
        return Manifest(
            version_id=uuid.UUID(data["version_id"]),
            model=data["model"],
            version=data["version"],
            entrypoint=data.get("entrypoint"),
            files=tuple(
                RemoteFile(
                    path=f["path"],
                    size=int(f["size"]),
                    address=f["address"],
                    stored_size=int(f["stored_size"]),
                    data_key=base64.b64decode(f["data_key"]),
                )
                for f in data["files"]
            ),
        )

    async def download(
        self, address: str, *, max_bytes: int, sink: Callable[[bytes], object]
    ) -> int:
        """Stream the encrypted blob at ``address`` into ``sink``; returns the byte count."""
        n = 0
        try:
            async with self._http.stream("GET", f"/nodes/blobs/{address}") as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise _error(r)
                async for piece in r.aiter_bytes():
                    n += len(piece)
                    if n > max_bytes:
                        raise MarketplaceError(
                            f"blob {address} is larger than announced ({max_bytes} bytes)",
                            status=502,
                            code="blob_size_mismatch",
                        )
                    sink(piece)
        except httpx.HTTPError as exc:
            raise MarketplaceError(f"blob download failed: {exc!r}") from None
        return n


def _error(r: httpx.Response) -> MarketplaceError:
    code, detail = "marketplace_error", r.reason_phrase
    try:
        body = r.json()
        code = str(body.get("code", code))
        detail = str(body.get("detail", detail))
    except ValueError:
        pass
    return MarketplaceError(detail, status=r.status_code, code=code)

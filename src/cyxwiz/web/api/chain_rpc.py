"""``POST /chain/rpc``: the dev chain over Solana JSON-RPC, for wallets and the rpc backend."""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response

from cyxwiz.config import ChainBackend, Env, Settings
from cyxwiz.errors import NotFound
from cyxwiz.web.deps import get_ctx

router = APIRouter(tags=["chain"])

DESCRIPTION = """\
The embedded Solana chain (the `local` backend) as a Solana JSON-RPC 2.0 endpoint, so a wallet
(or solana-py, `@solana/web3.js`, the `rpc` backend) talks to it exactly as to a real cluster:
point the wallet's custom RPC URL here.

Served only when `CYXWIZ_ENV=dev`, `CYXWIZ_CHAIN_BACKEND=local` and `CYXWIZ_CHAIN_SERVE_RPC`
is true; otherwise 404. Answers use Solana's shapes (`{"context": {"slot", "apiVersion"},
"value"}` where a cluster wraps) and error codes (-32700, -32600, -32601, -32602, -32002
preflight failure, -32003 signature verification failure). Batches are supported.

Methods: getHealth, getVersion, getGenesisHash, getSlot, getBlockHeight, getEpochInfo,
getLatestBlockhash, isBlockhashValid, getFeeForMessage, getRecentPrioritizationFees,
getMinimumBalanceForRentExemption, sendTransaction (base58/base64), getSignatureStatuses,
getSignaturesForAddress, getTransaction (json/base64/base58), getAccountInfo,
getMultipleAccounts (base58/base64/jsonParsed), getBalance, getTokenAccountBalance,
getTokenAccountsByOwner, getTokenSupply, requestAirdrop. See docs/chain.md.
"""

JSON_RPC_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["jsonrpc", "method"],
    "properties": {
        "jsonrpc": {"type": "string", "enum": ["2.0"]},
        "id": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        "method": {"type": "string", "example": "getBalance"},
        "params": {"type": "array", "items": {}},
    },
}
REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"oneOf": [JSON_RPC_REQUEST, {"type": "array", "items": JSON_RPC_REQUEST}]},
            "example": {"jsonrpc": "2.0", "id": 1, "method": "getLatestBlockhash"},
        }
    },
}


def serves_rpc(settings: Settings) -> bool:
    """The endpoint exists only for a dev server that owns the local chain."""
    return (
        settings.env == Env.dev
        and settings.chain_backend is ChainBackend.local
        and settings.chain_serve_rpc
    )


@router.post(
    "/chain/rpc",
    summary="Solana JSON-RPC for the dev chain",
    description=DESCRIPTION,
    response_class=Response,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={
        200: {
            "description": "A JSON-RPC response (or an array of them for a batch).",
            "content": {
                "application/json": {
                    "example": {
                        "jsonrpc": "2.0",
                        "result": {
                            "context": {"slot": 1004, "apiVersion": "2.2.0"},
                            "value": {
                                "blockhash": "EkSnNWid2cvwEVnVx9aBqawnmiCNiDgp3gUdkDPTKN1N",
                                "lastValidBlockHeight": 1154,
                            },
                        },
                        "id": 1,
                    }
                }
            },
        },
        204: {"description": "Every request in the body was a notification (no id)."},
        404: {"description": "Not served (not dev, rpc backend, or chain_serve_rpc off)."},
        413: {"description": "Body larger than max_json_bytes."},
    },
)
async def chain_rpc(request: Request) -> Response:
    ctx = get_ctx(request)
    if not serves_rpc(ctx.settings):
        raise NotFound(
            "the chain JSON-RPC endpoint is served only in dev with the local chain backend",
            code="chain_rpc_disabled",
        )
    body = await request.body()

    def run() -> Any:
        from cyxwiz.chain.local import LocalChain
        from cyxwiz.chain.rpc_server import handle

        chain = ctx.chain
        if not isinstance(chain, LocalChain):  # a test or embedding passed another backend
            raise NotFound("the chain JSON-RPC endpoint needs the local chain backend")
        return handle(chain, body)

    answer = await anyio.to_thread.run_sync(run)
    if answer is None:
        return Response(status_code=204)
    return Response(
        json.dumps(answer, separators=(",", ":")).encode(), media_type="application/json"
    )

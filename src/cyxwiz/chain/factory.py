"""Open the chain the settings ask for."""

from __future__ import annotations

from cyxwiz.chain.interfaces import Chain
from cyxwiz.config import ChainBackend, Settings


def open_chain(settings: Settings) -> Chain:
    """The local LiteSVM chain in the data dir, or the configured cluster over JSON-RPC."""
    if settings.chain_backend is ChainBackend.rpc:
        from cyxwiz.chain.rpc import RpcChain

        return RpcChain.from_settings(settings)
    from cyxwiz.chain.local import LocalChain

    return LocalChain(
        directory=settings.resolved_chain_dir,
        master_keys=settings.master_keys,
        blockhash_ttl=settings.chain_blockhash_ttl_seconds,
    )

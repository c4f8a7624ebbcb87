"""Solana settlement adapter: one ``Chain`` protocol, a local LiteSVM backend and an RPC backend."""

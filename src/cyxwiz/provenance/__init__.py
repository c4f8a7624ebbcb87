"""Provenance: on-chain attestations of model versions' content hashes."""

"""Hosted inference: the node registry (node records, assignments, manifests) and the client
the gateway uses to call nodes. See docs/inference.md."""

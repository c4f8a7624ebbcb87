"""The client's IP address for throttles and abuse budgets (login, registration, demo calls).

Behind a load balancer every request comes from the balancer's address, so the real client is in
``X-Forwarded-For``. That header is written by whoever sends the request, so it is believed only
for the number of proxies the operator declares (``CYXWIZ_TRUSTED_PROXY_COUNT``): with N trusted
proxies the client is the N-th address from the right (each proxy appends the address it saw).
With 0 (the default, no proxy) the header is ignored and the socket peer is the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

UNKNOWN = "unknown"


def client_ip(scope: Scope, *, trusted_proxies: int = 0) -> str:
    """The caller's address as text (IPv6 collapsed to its /64), or ``"unknown"``.

    IPv6 clients are keyed by their /64: one subscriber usually holds a whole /64, so keying by
    the full address would let one machine rotate through 2**64 identities.
    """
    peer = scope.get("client")
    address = peer[0] if peer else None
    if trusted_proxies > 0:
        forwarded = _forwarded_for(scope.get("headers") or ())
        if len(forwarded) >= trusted_proxies:
            address = forwarded[-trusted_proxies]
    return _normalize(address)


def _forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(",") if h.strip())
    return hops


def _normalize(address: str | None) -> str:
    if not address:
        return UNKNOWN
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)

"""Outbound addresses the platform may connect to (nodes today, webhooks tomorrow): SSRF guard.

A URL given by a user (a node's advertised URL) must not point the platform at its own
internals: loopback, private networks, link-local (cloud metadata at 169.254.169.254), CGNAT,
multicast, reserved or unspecified addresses. Checking the text of the URL is not enough:

- numeric hosts have many spellings the OS resolver accepts (``127.1``, ``2130706433``,
  ``0x7f000001``, ``0177.0.0.1``): they are normalised the way ``inet_aton`` does;
- names resolve to anything (``localtest.me`` → 127.0.0.1, ``metadata.google.internal`` →
  169.254.169.254): every address a name resolves to is checked, and a name that does not
  resolve is refused;
- a name may resolve differently a second later (DNS rebinding): callers resolve, check and
  then connect to the address they checked (``AddressGuard.resolve``), never to the name.

The resolver is injectable (``Resolver``: host, port → IP strings) so tests can play any DNS.
A leaf module: imports nothing from cyxwiz.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

_NUMERIC_V4 = re.compile(r"^[0-9a-fA-FxX.]+$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeAddress(ValueError):
    """The host is (or resolves to) an address the platform must not connect to."""


def system_resolver(host: str, port: int) -> list[str]:
    """The OS resolver's addresses for ``host`` (TCP), in its order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any spelling the OS resolver accepts
    (dotted, shortened ``127.1``, decimal ``2130706433``, hex ``0x7f000001``, octal), else
    None (a name)."""
    h = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if _NUMERIC_V4.match(h) and any(c.isdigit() for c in h):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return None
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address (and so is any IPv4 address it
    embeds: IPv4-mapped, 6to4, Teredo, NAT64)."""
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    ):
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not ip.is_private and ip not in ipaddress.IPv4Network("100.64.0.0/10")
    if ip.scope_id:
        return False
    inner = _embedded_v4(ip)
    return inner is None or is_public(inner)


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings as networks (``ValueError`` on a bad one)."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


@dataclass
class AddressGuard:
    """Decides where the platform may connect.

    ``allow_private`` True (development) allows everything and resolves nothing (the local
    node on 127.0.0.1 works). Otherwise only public addresses, plus ``allowed_networks``
    (CIDRs an operator of the platform explicitly trusts, e.g. the VPC its nodes run in).
    """

    allow_private: bool
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver)

    def allowed(self, ip: IPAddress) -> bool:
        """Whether the platform may connect to ``ip``."""
        if self.allow_private:
            return True
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return True
        return is_public(ip)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: with ``allow_private``, ``[host]``
        unchanged; otherwise every address ``host`` resolves to, each checked, normalised
        (UnsafeAddress if any one is refused, or the name does not resolve). Connect to one
        of these, never to the name again (DNS rebinding)."""
        if self.allow_private:
            return [host]
        name = host.strip().strip("[]").lower().rstrip(".") or host
        literal = literal_ip(name)
        if literal is not None:
            found: list[IPAddress] = [literal]
        else:
            if name == "localhost" or name.endswith(".localhost"):
                raise UnsafeAddress(f"host {host!r} is not publicly routable")
            try:
                raw = self.resolver(name, port)
            except Exception as exc:  # any resolver failure: refuse
                raise UnsafeAddress(f"host {host!r} does not resolve ({exc})") from None
            found = []
            for value in raw:
                ip = literal_ip(str(value).split("%", 1)[0])
                if ip is None:
                    raise UnsafeAddress(f"host {host!r} resolved to a non-address {value!r}")
                found.append(ip)
            if not found:
                raise UnsafeAddress(f"host {host!r} does not resolve")
        refused = [str(ip) for ip in found if not self.allowed(ip)]
        if refused:
            raise UnsafeAddress(
                f"host {host!r} is not publicly routable (resolves to {', '.join(refused)})"
            )
        return [str(ip) for ip in found]

"""The client address used by throttles: X-Forwarded-For is believed only behind trusted proxies."""

from __future__ import annotations

from cyxwiz.web.clientip import client_ip


def scope(peer: str | None, *forwarded: str) -> dict[str, object]:
    headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
    return {"type": "http", "client": (peer, 1234) if peer else None, "headers": headers}


def test_forged_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_ip(scope("203.0.113.9", "198.51.100.1")) == "203.0.113.9"


def test_trusted_proxy_takes_the_address_it_appended() -> None:
    # the client forged "1.1.1.1"; the proxy appended what it saw (198.51.100.7)
    s = scope("10.0.0.2", "1.1.1.1, 198.51.100.7")
    assert client_ip(s, trusted_proxies=1) == "198.51.100.7"
    assert client_ip(scope("10.0.0.2", "1.1.1.1", "198.51.100.7"), trusted_proxies=1) == (
        "198.51.100.7"
    )


def test_ipv6_clients_share_their_64_and_mapped_v4_is_v4() -> None:
    assert client_ip(scope("2001:db8:1:2:aaaa::1")) == client_ip(scope("2001:db8:1:2:bbbb::9"))
    assert client_ip(scope("2001:db8:1:2::1")) == "2001:db8:1:2::/64"
    assert client_ip(scope("::ffff:203.0.113.5")) == "203.0.113.5"


def test_missing_or_garbage_peer_is_unknown() -> None:
    assert client_ip(scope(None)) == "unknown"
    assert client_ip(scope("not-an-ip")) == "unknown"
    assert client_ip(scope("10.0.0.2", "garbage"), trusted_proxies=1) == "unknown"

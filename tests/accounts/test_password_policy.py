"""The password policy and email non-disclosure (issue 9, item 10): the attacks first.

Before the fix, "password" with a NUL in it, the username itself and "password1"-class
passwords all registered (201), and registering someone else's email answered 409
``email_taken``, telling anyone which addresses have an account.
"""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi.testclient import TestClient

from cyxwiz.accounts.passwords import common_passwords
from tests.factories import PASSWORD

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def _post(client: TestClient, url: str, body: dict[str, str]) -> httpx.Response:
    # json.dumps escapes lone surrogates as \\udxxx (what a hostile client can send)
    return client.post(
        url, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )


def _register(client: TestClient, username: str, password: str, **extra: str) -> httpx.Response:
    body = {"username": username, "email": f"{username}@example.com", "password": password}
    body.update(extra)
    return _post(client, REGISTER, body)


def _problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


@pytest.mark.parametrize(
    "password",
    [
        "correct\x00horse battery",  # NUL
        "correct horse\nbattery",
        "correct horse\tbattery",
        "correct horse battery\x7f",  # DEL
        "correct horse \x1b[31mbattery",  # an escape sequence for whoever tails the logs
        "correct horse \u0085battery",  # C1 control
    ],
)
def test_control_characters_are_refused(client: TestClient, password: str) -> None:
    _problem(_register(client, "ctrl", password), 422, "invalid_password")
    assert client.post(LOGIN, json={"username": "ctrl", "password": PASSWORD}).status_code == 401


def test_a_lone_surrogate_is_refused_cleanly(client: TestClient) -> None:
    """It cannot be hashed as UTF-8: a clean 422, never a 500."""
    _problem(_register(client, "ctrl", "correct horse \ud800battery"), 422, "validation_error")
    assert client.post(LOGIN, json={"username": "ctrl", "password": PASSWORD}).status_code == 401


@pytest.mark.parametrize(
    ("username", "password", "email"),
    [
        ("grace-hopper", "grace-hopper", "g@example.com"),
        ("grace-hopper", "GRACE-HOPPER", "g@example.com"),
        ("grace", "grace@navy.example", "Grace@Navy.example"),
    ],
)
def test_password_equal_to_username_or_email_is_refused(
    client: TestClient, username: str, password: str, email: str
) -> None:
    r = _register(client, username, password, email=email)
    _problem(r, 422, "password_like_username")


@pytest.mark.parametrize(
    "password", ["password", "12345678", "baseball", "Football", "trustno1", "qwertyuiop"]
)
def test_common_passwords_are_refused(client: TestClient, password: str) -> None:
    _problem(_register(client, "commoner", password), 422, "common_password")


def test_the_common_list_ships_with_the_package() -> None:
    common = common_passwords()
    assert len(common) >= 10_000
    assert {"123456", "password", "iloveyou", "sunshine"} <= common
    assert PASSWORD not in common


def test_short_passwords_keep_their_code(client: TestClient) -> None:
    _problem(_register(client, "shorty", "x7!k"), 422, "weak_password")


def test_a_good_password_still_registers(client: TestClient) -> None:
    assert _register(client, "goodpw", "violet otter quarterly").status_code == 201


def test_the_web_form_applies_the_same_policy(client: TestClient) -> None:
    client.get("/signup")
    r = client.post(
        "/signup",
        data={
            "username": "formpw",
            "email": "formpw@example.com",
            "password": "iloveyou",
            "csrf_token": client.cookies.get("cxw_csrf") or "",
        },
        headers={"Accept": "text/html"},
        follow_redirects=False,
    )
    assert r.status_code == 422
    assert "most commonly used" in r.text


def test_registration_does_not_reveal_whether_an_email_has_an_account(
    client: TestClient,
) -> None:
    """The enumeration attack: register with the victim's email and read the answer."""
    victim = _register(client, "victim", PASSWORD, email="victim@example.com")
    assert victim.status_code == 201
    probe = _register(client, "prober", "violet otter quarterly", email="Victim@Example.com")
    fresh = _register(client, "prober2", "violet otter quarterly", email="nobody@example.com")
    assert probe.status_code == fresh.status_code == 201
    assert set(probe.json()) == set(fresh.json())
    assert "email" not in probe.text.lower()
    # the email is no login name, so it cannot be used to probe either (same answer)
    for login in ("victim@example.com", "nobody@example.com"):
        r = client.post(LOGIN, json={"username": login, "password": "violet otter quarterly"})
        _problem(r, 401, "invalid_credentials")
    # the victim's account is untouched
    r = client.post(LOGIN, json={"username": "victim", "password": PASSWORD})
    assert r.status_code == 200
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["email"] == "victim@example.com"


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "a\x00b@example.com"), ("email", "a\ud800@example.com"), ("display_name", "x\x00")],
)
def test_unstorable_text_in_other_fields_is_a_clean_422(
    client: TestClient, field: str, value: str
) -> None:
    r = _register(client, "oddtext", PASSWORD, **{field: value})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("login", "password", "status", "code"),
    [
        ("ada\x00", "correct horse", 401, "invalid_credentials"),
        ("ada", "pw-\x00-\x1b", 401, "invalid_credentials"),
        ("\ud800", "correct horse", 422, "validation_error"),
        ("ada", "pw-\ud800", 422, "validation_error"),
    ],
)
def test_unstorable_login_text_is_a_clean_problem(
    client: TestClient, login: str, password: str, status: int, code: str
) -> None:
    _post(client, REGISTER, {"username": "ada", "email": "a@example.com", "password": PASSWORD})
    _problem(_post(client, LOGIN, {"username": login, "password": password}), status, code)

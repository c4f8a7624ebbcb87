"""Accounts API: register, login, /me, API keys — who may and who may not."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.factories import PASSWORD, Api


def problem(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["detail"]
    return body


def test_register_login_me(client: TestClient) -> None:
    r = client.post(
        "/api/v1/auth/register",
        json={"username": "Ada", "email": "Ada@Example.com", "password": PASSWORD},
    )
    assert r.status_code == 201
    assert r.json()["username"] == "ada"
    assert "password" not in r.text
    assert "hash" not in r.text
    r = client.post(
        "/api/v1/auth/login", json={"username": "ada@example.com", "password": PASSWORD}
    )
    assert r.status_code == 401  # login is by username only: emails are not identities
    r = client.post("/api/v1/auth/login", json={"username": "ADA", "password": PASSWORD})
    assert r.status_code == 200
    token = r.json()["access_token"]
    assert r.json()["token_type"] == "bearer"
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert me.json()["role"] == "user"
    assert me.json()["auth"] == "access"


def test_me_requires_auth(client: TestClient) -> None:
    r = client.get("/api/v1/me")
    problem(r, 401, "not_authenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")
    problem(
        client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}), 401, "invalid_token"
    )
    problem(client.get("/api/v1/me", headers={"Authorization": "Basic abc"}), 401, "invalid_token")


def test_login_wrong_password_and_unknown_user(api: Api, client: TestClient) -> None:
    acct = api.user()
    problem(
        client.post(
            "/api/v1/auth/login", json={"username": acct.username, "password": "wrong-password"}
        ),
        401,
        "invalid_credentials",
    )
    problem(
        client.post("/api/v1/auth/login", json={"username": "ghost", "password": "whatever-1"}),
        401,
        "invalid_credentials",
    )


def test_register_rejects_bad_input_and_changes_nothing(api: Api, client: TestClient) -> None:
    api.user("taken")
    cases = [
        (
            {"username": "taken", "email": "x@example.com", "password": PASSWORD},
            409,
            "username_taken",
        ),
        (
            {"username": "a", "email": "a1@example.com", "password": PASSWORD},
            422,
            "invalid_username",
        ),
        (
            {"username": "-bad-", "email": "a2@example.com", "password": PASSWORD},
            422,
            "invalid_username",
        ),
        (
            {"username": "api", "email": "a3@example.com", "password": PASSWORD},
            422,
            "invalid_username",
        ),
        (
            {"username": "okname", "email": "not-an-email", "password": PASSWORD},
            422,
            "invalid_email",
        ),
        (
            {"username": "okname", "email": "ok@example.com", "password": "short"},
            422,
            "weak_password",
        ),
        ({"username": "okname", "email": "ok@example.com"}, 422, "validation_error"),
        ({"username": 5, "email": "ok@example.com", "password": PASSWORD}, 422, "validation_error"),
        (
            {
                "username": "okname",
                "email": "ok@example.com",
                "password": PASSWORD,
                "role": "admin",
            },
            422,
            "validation_error",
        ),
    ]
    for body, status, code in cases:
        problem(client.post("/api/v1/auth/register", json=body), status, code)
    # nothing was created: the names are still free
    r = client.post(
        "/api/v1/auth/register",
        json={"username": "okname", "email": "ok@example.com", "password": PASSWORD},
    )
    assert r.status_code == 201


def test_malformed_json_and_oversized_body(client: TestClient) -> None:
    r = client.post(
        "/api/v1/auth/register",
        content=b'{"username": ',
        headers={"content-type": "application/json"},
    )
    problem(r, 400, "malformed_json")
    big = b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    r = client.post(
        "/api/v1/auth/register", content=big, headers={"content-type": "application/json"}
    )
    problem(r, 413, "payload_too_large")


def test_api_keys_lifecycle_and_scopes(api: Api, client: TestClient) -> None:
    acct = api.user()
    r = client.post(
        "/api/v1/api-keys", json={"name": "ci", "scopes": ["read"]}, headers=acct.headers
    )
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("cxw_sk_")
    listed = client.get("/api/v1/api-keys", headers=acct.headers).json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert listed[0]["last_used_at"] is None

    kh = {"Authorization": f"Bearer {key}"}
    me = client.get("/api/v1/me", headers=kh)
    assert me.status_code == 200
    assert me.json()["auth"] == "api_key"
    assert me.json()["scopes"] == ["read"]
    assert (
        client.get("/api/v1/api-keys", headers=acct.headers).json()[0]["last_used_at"] is not None
    )

    # a read-only key cannot write
    problem(
        client.post(
            "/api/v1/models", json={"name": "x1", "title": "x", "category": "finance"}, headers=kh
        ),
        403,
        "insufficient_scope",
    )
    # API keys cannot mint more keys
    wkey = client.post(
        "/api/v1/api-keys", json={"name": "w", "scopes": ["write"]}, headers=acct.headers
    ).json()["key"]
    problem(
        client.post(
            "/api/v1/api-keys",
            json={"name": "x", "scopes": ["read"]},
            headers={"Authorization": f"Bearer {wkey}"},
        ),
        403,
        "forbidden",
    )
    # another user cannot revoke it
    other = api.user()
    problem(
        client.delete(f"/api/v1/api-keys/{created['id']}", headers=other.headers),
        404,
        "api_key_not_found",
    )
    r = client.delete(f"/api/v1/api-keys/{created['id']}", headers=acct.headers)
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    problem(client.get("/api/v1/me", headers=kh), 401, "invalid_token")


def test_api_key_bad_scopes(api: Api, client: TestClient) -> None:
    acct = api.user()
    problem(
        client.post(
            "/api/v1/api-keys", json={"name": "x", "scopes": ["root"]}, headers=acct.headers
        ),
        422,
        "invalid_scope",
    )
    problem(
        client.post("/api/v1/api-keys", json={"name": "x", "scopes": []}, headers=acct.headers),
        422,
        "invalid_scope",
    )
    assert client.get("/api/v1/api-keys", headers=acct.headers).json() == []
    problem(client.post("/api/v1/api-keys", json={"name": "x"}), 401, "not_authenticated")


def test_logout_revokes_token(api: Api, client: TestClient) -> None:
    acct = api.user()
    assert client.post("/api/v1/auth/logout", headers=acct.headers).status_code == 204
    problem(client.get("/api/v1/me", headers=acct.headers), 401, "invalid_token")


def test_unknown_route_is_problem_json(client: TestClient) -> None:
    problem(client.get("/api/v1/nope"), 404, "not_found")
    problem(client.delete("/api/v1/categories"), 405, "method_not_allowed")

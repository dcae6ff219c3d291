"""Logging in to the in-process emulator (see conftest.py) as its unit tests do."""

from __future__ import annotations

from fastapi.testclient import TestClient


def login(client: TestClient, username: str = "admin@acme.example", password: str = "acme-dev-password") -> str:
    response = client.post(
        "/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": "duplex-acme-client",
            "client_secret": "duplex-acme-secret",
            "username": username,
            "password": password,
        },
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

"""The vault's envelope encryption, without a database: keyrings, wrapping, sealing, rotation."""

from __future__ import annotations

import base64
import secrets

import pytest
from pydantic import ValidationError

from services.common.logging import SECRETS
from services.common.vault import (
    Keyring,
    Purpose,
    Sealed,
    SessionToken,
    UnknownKeyError,
    VaultError,
    VaultSettings,
    WrappedKey,
    new_data_key,
    rewrap,
    seal,
    unseal,
    unwrap,
    vault_settings,
    wrap,
)

pytestmark = pytest.mark.unit

K1 = secrets.token_bytes(32)
K2 = secrets.token_bytes(32)
PLAINTEXT = "5Aep861TSESvWeug_refresh.token.value"


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_a_secret_round_trips_under_its_tenant_and_purpose() -> None:
    key = new_data_key()

    sealed = seal(key, "acme", Purpose.REFRESH_TOKEN, PLAINTEXT)

    assert unseal(key, "acme", Purpose.REFRESH_TOKEN, sealed) == PLAINTEXT
    assert PLAINTEXT.encode() not in sealed.ciphertext
    assert len(sealed.nonce) == 12


def test_every_value_gets_its_own_nonce() -> None:
    key = new_data_key()

    first, second = (seal(key, "acme", Purpose.REFRESH_TOKEN, PLAINTEXT) for _ in range(2))

    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    ("tenant", "purpose"),
    [("globex", Purpose.REFRESH_TOKEN), ("acme", Purpose.CLIENT_SECRET), ("globex", Purpose.ACCESS_TOKEN)],
)
def test_a_ciphertext_moved_to_another_tenant_or_purpose_does_not_decrypt(tenant: str, purpose: Purpose) -> None:
    # Same data key on purpose: only the associated data tells the rows apart.
    key = new_data_key()
    sealed = seal(key, "acme", Purpose.REFRESH_TOKEN, PLAINTEXT)

    with pytest.raises(VaultError, match="does not decrypt") as raised:
        unseal(key, tenant, purpose, sealed)

    assert PLAINTEXT not in str(raised.value)


def test_an_altered_ciphertext_does_not_decrypt() -> None:
    key = new_data_key()
    sealed = seal(key, "acme", Purpose.REFRESH_TOKEN, PLAINTEXT)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]

    with pytest.raises(VaultError):
        unseal(key, "acme", Purpose.REFRESH_TOKEN, Sealed(sealed.nonce, flipped))


def test_a_data_key_wrapped_by_the_current_kek_unwraps() -> None:
    keyring = Keyring({"k1": K1}, "k1")
    key = new_data_key()

    wrapped = wrap(keyring, "acme", key)

    assert wrapped.kek_id == "k1"
    assert unwrap(keyring, "acme", wrapped) == key
    assert key not in wrapped.ciphertext


def test_a_wrong_kek_under_the_same_id_fails() -> None:
    wrapped = wrap(Keyring({"k1": K1}, "k1"), "acme", new_data_key())

    with pytest.raises(VaultError, match="does not decrypt under key-encryption key 'k1'"):
        unwrap(Keyring({"k1": K2}, "k1"), "acme", wrapped)


def test_a_missing_kek_is_named() -> None:
    wrapped = wrap(Keyring({"k1": K1}, "k1"), "acme", new_data_key())

    with pytest.raises(UnknownKeyError, match="'k1' is not in the keyring"):
        unwrap(Keyring({"k2": K2}, "k2"), "acme", wrapped)


def test_a_wrapped_key_moved_to_another_tenant_fails() -> None:
    keyring = Keyring({"k1": K1}, "k1")
    wrapped = wrap(keyring, "acme", new_data_key())

    with pytest.raises(VaultError):
        unwrap(keyring, "globex", wrapped)


def test_rotation_rewraps_under_the_new_kek_and_old_plus_new_reads_both() -> None:
    old = Keyring({"k1": K1}, "k1")
    both = Keyring({"k2": K2, "k1": K1}, "k2")
    new_only = Keyring({"k2": K2}, "k2")
    key = new_data_key()
    sealed = seal(key, "acme", Purpose.REFRESH_TOKEN, PLAINTEXT)
    before = wrap(old, "acme", key)

    # Mid-rotation: a reader with both keys reads a key still under the old KEK.
    assert unwrap(both, "acme", before) == key
    after = rewrap(both, "acme", before)

    assert after.kek_id == "k2"
    assert after.ciphertext != before.ciphertext
    assert unseal(unwrap(new_only, "acme", after), "acme", Purpose.REFRESH_TOKEN, sealed) == PLAINTEXT
    assert unwrap(both, "acme", after) == key
    with pytest.raises(UnknownKeyError):
        unwrap(old, "acme", after)
    # Idempotent: a key already under the current KEK is left as it is.
    assert rewrap(both, "acme", after) is after


def test_keyring_settings_take_the_first_key_as_current() -> None:
    settings = VaultSettings(keys=f"k2:{b64(K2)}, k1:{b64(K1)}")

    keyring = Keyring.from_settings(settings)

    assert (keyring.current, keyring.ids) == ("k2", ("k2", "k1"))
    assert keyring.key("k1") == K1
    assert b64(K1) not in repr(keyring)
    assert b64(K1) not in repr(settings)
    # The key texts are masked in logs from now on.
    assert SECRETS.mask(f"VAULT_KEYS had {b64(K2)}") == "VAULT_KEYS had ***"


def test_keyring_settings_are_read_from_vault_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_KEYS", f"primary:{b64(K1)}")
    monkeypatch.setenv("VAULT_ROTATION_BATCH_SIZE", "7")

    settings = VaultSettings()

    assert Keyring.from_settings(settings).current == "primary"
    assert settings.rotation_batch_size == 7


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"k1={b64(K1)}", "expected <id>:<base64 of 32 bytes>"),
        (f"k1:{b64(K1)},k1:{b64(K2)}", "appears twice"),
        ("k1:not base64!", "not valid base64"),
        (f"k1:{b64(K1[:16])}", "is 16 bytes"),
        (f"bad id:{b64(K1)}", "expected <id>"),
    ],
)
def test_malformed_keys_are_refused_without_quoting_them(text: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as raised:
        VaultSettings(keys=text)

    assert b64(K1) not in str(raised.value)


def test_nothing_secret_shows_in_reprs() -> None:
    key = new_data_key()
    wrapped = wrap(Keyring({"k1": K1}, "k1"), "acme", key)
    sealed = seal(key, "acme", Purpose.ACCESS_TOKEN, PLAINTEXT)
    session = SessionToken(PLAINTEXT, "https://acme.my.salesforce.com")

    shown = " ".join(repr(value) for value in (wrapped, sealed, session))

    assert PLAINTEXT not in shown
    assert repr(wrapped.ciphertext) not in shown
    assert repr(sealed.ciphertext) not in shown
    assert shown.startswith("WrappedKey(kek_id='k1')")
    assert SessionToken.from_json(session.to_json()) == session


def test_a_wrapped_key_is_bound_to_its_kek_id() -> None:
    # Relabelling a row with another id of the same key material must not pass either.
    keyring = Keyring({"k1": K1, "alias": K1}, "k1")
    wrapped = wrap(keyring, "acme", new_data_key())

    with pytest.raises(VaultError):
        unwrap(keyring, "acme", WrappedKey("alias", wrapped.nonce, wrapped.ciphertext))


def test_services_take_the_vault_as_optional_but_never_a_malformed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_KEYS", raising=False)
    assert vault_settings() is None

    monkeypatch.setenv("VAULT_KEYS", f"k1:{b64(K1)}")
    found = vault_settings()
    assert found is not None
    assert Keyring.from_settings(found).current == "k1"

    monkeypatch.setenv("VAULT_KEYS", "k1:short")
    with pytest.raises(ValidationError, match="not valid base64"):
        vault_settings()

"""The shipped seed file and the seed loader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.salesforce_emulator.seed import SeedError, load_seed

pytestmark = pytest.mark.unit

SEED = Path(__file__).resolve().parents[3] / "deploy" / "emulator" / "seed.yaml"


def test_the_default_seed_has_acme_as_default_and_a_second_org() -> None:
    seed = load_seed(SEED)
    assert seed.default_org.alias == "acme"
    assert len(seed.orgs) >= 2
    acme = seed.default_org
    assert acme.users
    assert acme.users[0].password.get_secret_value()
    client = acme.clients[0]
    assert client.client_id
    assert client.client_secret.get_secret_value()
    assert client.redirect_uris
    assert {"Account", "Contact", "Partner_Tier__c"} <= set(acme.objects)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("orgs: []", "at least one org"),
        ("orgs:\n  - {alias: a, default: true}\n  - {alias: b, default: true}", "only one org"),
        ("orgs:\n  - {alias: a}\n  - {alias: a}", "repeat"),
        ("orgs:\n  - {alias: a, edition: galactic}", "edition"),
        ("orgs: [", "cannot read"),
    ],
)
def test_invalid_seeds_name_the_file_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(text)
    with pytest.raises(SeedError, match=problem) as raised:
        load_seed(path)
    assert str(path) in str(raised.value)


def test_a_missing_seed_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="cannot read"):
        load_seed(tmp_path / "absent.yaml")

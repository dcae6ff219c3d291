"""Record ids against fixed vectors worked out by hand from the documented checksum algorithm.

Each 15-character id splits into three 5-character chunks; a chunk's suffix character is
``"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[flags]`` where bit j of flags is set when the chunk's
character j is an uppercase letter.
"""

from __future__ import annotations

import pytest

from services.salesforce_emulator import ids

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("id15", "id18"),
    [
        # "001A0": A at j=3 -> 8 -> I; "00000": 0 -> A; "6Vm9r": V at j=1 -> 2 -> C.
        ("001A0000006Vm9r", "001A0000006Vm9rIAC"),
        # The worked example in the reference: "00190" -> A, "00000" -> A, "B98de": B at j=0 -> 1 -> B.
        ("0019000000B98de", "0019000000B98deAAB"),
        # "a0B1c": B at j=2 -> 4 -> E; "D2eF3": j=0,3 -> 9 -> J; "GHIJK": all five -> 31 -> 5.
        ("a0B1cD2eF3GHIJK", "a0B1cD2eF3GHIJKEJ5"),
        # Lowercase letters and digits never set a bit.
        ("abcde01234zzzzz", "abcde01234zzzzzAAA"),
    ],
)
def test_checksum_matches_hand_computed_vectors(id15: str, id18: str) -> None:
    assert ids.to18(id15) == id18
    assert ids.is_valid(id18)
    assert ids.to18(id18) == id18


def test_a_wrong_suffix_is_not_a_valid_id() -> None:
    assert not ids.is_valid("001A0000006Vm9rIAD")
    assert not ids.is_valid("001A0000006Vm9riac")  # the suffix is uppercase or digits only


def test_issued_ids_carry_their_own_checksum() -> None:
    issued = ids.IdFactory("5g", start=1).next("001")
    assert issued.startswith("0015g")
    assert issued[15:] == ids.checksum(issued[:15])
    assert ids.is_valid(issued)

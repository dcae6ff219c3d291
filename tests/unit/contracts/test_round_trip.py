"""Every message in proto/duplex survives serialisation with every field populated.

Messages are discovered from the generated modules, so a new message is covered the moment it is
added; a field the filler cannot populate fails the test instead of being skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import duplex
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

pytestmark = pytest.mark.unit


def _contract_modules() -> Iterator[ModuleType]:
    # The generated packages are namespace packages (no __init__.py), which pkgutil does not walk.
    for root in map(Path, duplex.__path__):
        for path in sorted(root.rglob("*_pb2.py")):
            relative = path.relative_to(root).with_suffix("")
            yield importlib.import_module(".".join(("duplex", *relative.parts)))


def _descriptors() -> list[Descriptor]:
    found = []
    for module in _contract_modules():
        found.extend(module.DESCRIPTOR.message_types_by_name.values())
    return sorted(found, key=lambda d: d.full_name)


def _sample_scalar(field: Any, salt: int) -> object:
    samples: dict[int, object] = {
        FieldDescriptor.TYPE_STRING: f"{field.name}-{salt}",
        FieldDescriptor.TYPE_BYTES: bytes([salt % 256, 0, 1, 255]),
        FieldDescriptor.TYPE_BOOL: True,
        FieldDescriptor.TYPE_INT32: -7 - salt,
        FieldDescriptor.TYPE_INT64: 2**40 + salt,
        FieldDescriptor.TYPE_DOUBLE: 1.5 + salt,
    }
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type not in samples:
        pytest.fail(f"no sample for {field.full_name} (type {field.type}): extend the filler")
    return samples[field.type]


def _fill(message: Message, salt: int = 1, depth: int = 0) -> Message:
    """Set every field; for oneofs the last member, so each oneof is exercised at least once."""
    chosen_oneof_member = {o.name: o.fields[-1].name for o in message.DESCRIPTOR.oneofs}
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen_oneof_member[oneof.name] != field.name:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            container = getattr(message, field.name)
            if value_field.message_type is not None:
                _fill(container[f"k{salt}"], salt + 1, depth + 1)
            else:
                container[f"k{salt}"] = _sample_scalar(value_field, salt)
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            # Timestamps must be valid calendar instants to serialise as JSON.
            getattr(message, field.name).FromSeconds(1_700_000_000 + salt)
        elif field.message_type is not None:
            if field.is_repeated:
                _fill(getattr(message, field.name).add(), salt + 1, depth + 1)
            else:
                _fill(getattr(message, field.name), salt + 1, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).append(_sample_scalar(field, salt))
        else:
            setattr(message, field.name, _sample_scalar(field, salt))
    return message


@pytest.mark.parametrize("descriptor", _descriptors(), ids=lambda d: d.full_name)
def test_every_message_round_trips_binary_and_json(descriptor: Descriptor) -> None:
    cls = GetMessageClass(descriptor)
    original = _fill(cls())

    assert cls.FromString(original.SerializeToString()) == original
    assert json_format.Parse(json_format.MessageToJson(original), cls()) == original


def test_contracts_are_discovered() -> None:
    names = {d.full_name for d in _descriptors()}
    assert {
        "duplex.change.v1.RecordChanged",
        "duplex.mapping.v1.ChangeMapped",
        "duplex.writer.v1.WriteRecords",
        "duplex.writer.v1.WriteSettled",
        "duplex.governor.v1.AcquireCallsRequest",
    } <= names


@pytest.mark.parametrize(
    ("oneof_member", "value"),
    [
        ("null_value", True),
        ("string_value", "Acme"),
        ("int_value", -(2**62)),
        ("decimal_value", "12345678901234567890.000000001"),
        ("double_value", 0.1),
        ("bool_value", False),
        ("reference_value", "001000000000001AAA"),
    ],
)
def test_field_value_keeps_its_type(oneof_member: str, value: object) -> None:
    from duplex.change.v1 import value_pb2

    original = value_pb2.FieldValue(**{oneof_member: value})  # type: ignore[arg-type]
    decoded = value_pb2.FieldValue.FromString(original.SerializeToString())

    assert decoded.WhichOneof("kind") == oneof_member
    assert getattr(decoded, oneof_member) == value

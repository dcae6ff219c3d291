"""changedFields / nulledFields / diffFields bitmaps → field names (Salesforce's documented algorithm).

Element 0, when it starts with ``0x``, is a hex number whose bit i (least significant = 0) names
top-level schema field i. Every later element ``"<parentIndex>-0x<hex>"`` names fields of the
compound at ``parentIndex`` by bit position in its nested record, as ``Parent.Child``.

Written independently of the emulator's encoder; it tolerates what the official decoders do not
(lower-case and odd-length hex, nested elements in any position), and refuses what would silently
misname a field (a bit beyond the schema, a nested element for a non-compound field).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.cdc_ingest.event_schema import ChangeEventSchema


class BitmapError(ValueError):
    """A bitmap that does not fit the schema it claims to describe."""


def bits(hex_text: str) -> list[int]:
    """Set bit positions of ``0x…`` text, lowest first."""
    if not hex_text.lower().startswith("0x"):
        raise BitmapError(f"bitmap {hex_text!r} does not start with 0x")
    digits = hex_text[2:]
    try:
        value = int(digits, 16) if digits else 0
    except ValueError as exc:
        raise BitmapError(f"bitmap {hex_text!r} is not hexadecimal") from exc
    return [i for i in range(value.bit_length()) if value >> i & 1]


def expand(schema: ChangeEventSchema, bitmaps: Sequence[str]) -> list[str]:
    """Field names, top-level first then ``Parent.Child`` names, in bit order."""
    names: list[str] = []
    for position, element in enumerate(bitmaps):
        if element.lower().startswith("0x"):
            if position != 0:
                raise BitmapError(f"top-level bitmap {element!r} at position {position}")
            for index in bits(element):
                if index >= len(schema.fields):
                    raise BitmapError(f"bit {index} of {element!r} is beyond the schema's {len(schema.fields)} fields")
                names.append(schema.fields[index].name)
            continue
        parent_text, dash, child_bitmap = element.partition("-")
        if not dash or not parent_text.isdigit():
            raise BitmapError(f"bitmap element {element!r} is neither 0x… nor <index>-0x…")
        parent_index = int(parent_text)
        if parent_index >= len(schema.fields) or not schema.fields[parent_index].is_compound:
            raise BitmapError(f"bitmap element {element!r} names field {parent_index}, which is not a compound")
        parent = schema.fields[parent_index]
        for index in bits(child_bitmap):
            if index >= len(parent.children):
                raise BitmapError(f"bit {index} of {element!r} is beyond {parent.name}'s {len(parent.children)} parts")
            names.append(f"{parent.name}.{parent.children[index]}")
    return names

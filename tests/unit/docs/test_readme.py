"""The README's topic table tells the truth about deploy/kafka/topics.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.topics import load_topic_table

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_lists_every_topic_with_its_physical_name() -> None:
    text = README.read_text()
    table = load_topic_table()
    missing = [spec.name for spec in table.topics.values() if f"`{spec.name}`" not in text]
    assert missing == []


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text

"""The image tests build with podman (minutes from a fresh clone), so ``make test`` leaves their marker,
``image``, out and ``make image-test`` runs them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.image.containers import remove


@pytest.fixture
def container_name() -> Iterator[str]:
    """A name for one background container, removed after the test whatever happened."""
    name = f"duplex-image-test-{uuid.uuid4().hex[:12]}"
    yield name
    remove(name)

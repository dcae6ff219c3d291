"""Salesforce API versions: which ones Salesforce serves, which it retired, and the newest Duplex knows.

The versions are data, not code: ``salesforce_api_versions.yaml`` beside this module lists every
release Salesforce serves, oldest first. Tenant validation reads it (a retired version is an error,
a version newer than the list a warning) and so does the salesforce-emulator, which serves exactly
the listed versions. A new Salesforce release is one appended line there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

DATA_FILE = "salesforce_api_versions.yaml"

# Salesforce numbers its versions with a zero minor part: 31.0, 62.0, 68.0.
_SHAPE = re.compile(r"([1-9]\d{0,2})\.0")


def version_number(version: str) -> int | None:
    """62 for ``"62.0"``; None for anything that is not a Salesforce API version."""
    match = _SHAPE.fullmatch(version)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ApiRelease:
    """One Salesforce release: its API version (``"62.0"``) and name (``"Winter '25"``)."""

    version: str
    label: str

    @property
    def number(self) -> int:
        number = version_number(self.version)
        assert number is not None  # checked when the file was read
        return number


@dataclass(frozen=True)
class ApiVersions:
    """The releases Salesforce serves, oldest first; everything older is retired."""

    releases: tuple[ApiRelease, ...]

    @property
    def oldest(self) -> ApiRelease:
        return self.releases[0]

    @property
    def latest(self) -> ApiRelease:
        """The newest release Duplex knows (Salesforce may already serve a newer one)."""
        return self.releases[-1]

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(r.version for r in self.releases)

    def release(self, version: str) -> ApiRelease | None:
        """The known release of ``version``, if it is one."""
        number = version_number(version)
        if number is None or not self.oldest.number <= number <= self.latest.number:
            return None
        return self.releases[number - self.oldest.number]

    def is_retired(self, version: str) -> bool:
        """A well-formed version older than the oldest Salesforce still serves."""
        number = version_number(version)
        return number is not None and number < self.oldest.number

    def is_newer_than_known(self, version: str) -> bool:
        """A well-formed version after the latest release in the data file."""
        number = version_number(version)
        return number is not None and number > self.latest.number


def parse_api_versions(data: object) -> ApiVersions:
    """Check and read the data file's content: consecutive releases starting at ``oldestServed``."""
    if not isinstance(data, dict) or not isinstance(data.get("releases"), list):
        msg = f"{DATA_FILE}: expected a mapping with oldestServed and releases"
        raise ValueError(msg)
    oldest = version_number(str(data.get("oldestServed", "")))
    releases = []
    for item in data["releases"]:
        if not isinstance(item, dict) or not isinstance(item.get("version"), str) or not item.get("label"):
            msg = f'{DATA_FILE}: each release needs a version (quoted, such as "62.0") and a label'
            raise ValueError(msg)
        releases.append(ApiRelease(item["version"], str(item["label"])))
    numbers = [version_number(r.version) for r in releases]
    # One release per version number with no gaps, so a version's position is its index.
    if not releases or oldest is None or numbers != list(range(oldest, oldest + len(releases))):
        msg = f"{DATA_FILE}: releases must run from oldestServed upwards, one per version, with no gaps"
        raise ValueError(msg)
    return ApiVersions(tuple(releases))


@cache
def known_api_versions() -> ApiVersions:
    """The API versions of the data file shipped with Duplex (read once)."""
    text = files("services.common.tenant_config").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_api_versions(yaml.safe_load(text))

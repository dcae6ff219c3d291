"""Where the local stack keeps its downloads and its state."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = REPO_ROOT / ".cache"
DEFAULT_STATE_DIR = REPO_ROOT / "var"
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
MIGRATIONS_DIR = REPO_ROOT / "deploy" / "sql"
POSTGRES_BIN_DIR = Path("/usr/lib/postgresql/15/bin")

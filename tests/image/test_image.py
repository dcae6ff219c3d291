"""The services' image (``deploy/image/Containerfile``, ``make image``) run the way production runs it:
as its unprivileged user on a read-only root file system, here with the host's network so that the
session's real Kafka and PostgreSQL are reachable. The image is built first (layers cached by podman,
so an unchanged checkout rebuilds nothing)."""

from __future__ import annotations

import httpx
import pytest

from devstack.image import build
from devstack.install import ensure_image_tools
from devstack.paths import MIGRATIONS_DIR
from devstack.ports import pick_free_ports
from services.common.topics import TopicNames
from tests.image.containers import logs, run, start, state, stop, wait_until

# A cold build (the Debian base from the mirror, every wheel from PyPI) takes minutes.
pytestmark = [pytest.mark.image, pytest.mark.timeout(900)]

# Every entry point of the image but the admin CLI, which has its --help.
SERVICES = ("cdc-ingest", "mapping", "conflict-resolver", "writer", "rate-limit-governor")
READY_WITHIN = 90.0
USER = "10001"


@pytest.fixture(scope="module")
def image() -> str:
    ensure_image_tools()
    return build("services").tag


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_starts_and_stops_at_its_missing_settings(image: str, service: str) -> None:
    done = run(image, service)

    # Its whole composition root imported (its __main__ imports app before loading the settings),
    # then the missing database stopped it, named.
    assert done.returncode == 1, done.stderr
    assert "ModuleNotFoundError" not in done.stderr, done.stderr
    assert "ImportError" not in done.stderr, done.stderr
    assert "validation error for PostgresSettings\ndsn\n  Field required" in done.stderr, done.stderr


def test_the_admin_cli_is_the_image_s_duplex_command(image: str) -> None:
    by_service_name = run(image, "admin", "--help")
    by_command = run(image, "duplex", "--help")

    assert by_service_name.returncode == 0, by_service_name.stderr
    assert by_command.returncode == 0, by_command.stderr
    for listed in ("serve", "migrate", "topics"):
        assert listed in by_service_name.stdout
    assert by_command.stdout == by_service_name.stdout


def test_no_arguments_prints_what_the_image_runs(image: str) -> None:
    done = run(image)

    assert done.returncode == 0, done.stderr
    assert "rate-limit-governor" in done.stdout


PROBE = """
import importlib.util, os, shutil, sys
print(os.getuid(), os.getgid())
print(sys.prefix)
print([c for c in ("gcc", "cc", "c++", "g++", "clang", "ld", "make") if shutil.which(c)])
print([m for m in ("services.salesforce_emulator", "pip", "pytest", "tests") if importlib.util.find_spec(m)])
open("/tmp/scratch", "w").close()
try:
    open("/opt/duplex/scratch", "w")
except OSError as error:
    print(error.strerror)
"""


def test_runs_unprivileged_read_only_without_compilers_or_the_emulator(image: str) -> None:
    done = run(image, "python", "-c", PROBE)

    assert done.returncode == 0, done.stderr
    ids, prefix, compilers, modules, write_error = done.stdout.splitlines()
    assert ids == f"{USER} {USER}"
    assert prefix == "/opt/duplex"
    assert compilers == "[]"
    assert modules == "[]"
    assert write_error in ("Read-only file system", "Permission denied")


def test_the_root_file_system_is_read_only_even_for_root(image: str) -> None:
    # As root a write is refused only by the read-only mount, which is what this checks.
    done = run(image, "python", "-c", "open('/opt/duplex/scratch', 'w')", options=("--user=0",))

    assert done.returncode == 1
    assert "Read-only file system" in done.stderr, done.stderr


def test_mapping_from_the_image_gets_ready_against_kafka_and_postgres(
    image: str, fresh_database: str, kafka_bootstrap: str, topic_names: TopicNames, container_name: str
) -> None:
    # The image's own CLI applies its packaged migrations: all of the checkout's.
    migrated = run(image, "duplex", "migrate", "--dsn", fresh_database)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == f"applied {', '.join(sorted(p.name for p in MIGRATIONS_DIR.glob('*.sql')))}"
    (metrics_port,) = pick_free_ports(1)
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_names.prefix,
        "POSTGRES_DSN": fresh_database,
        "TELEMETRY_METRICS_PORT": str(metrics_port),
    }
    ready_url = f"http://127.0.0.1:{metrics_port}/readyz"

    def ready() -> bool:
        try:
            return httpx.get(ready_url, timeout=2).status_code == httpx.codes.OK
        except httpx.TransportError:
            return False

    start(image, container_name, settings, "mapping")
    wait_until(container_name, ready, f"200 from {ready_url}", READY_WITHIN)
    stop(container_name)

    # SIGTERM is a clean stop (exit 0); a halt would be 70.
    assert state(container_name) == "exited 0", logs(container_name)
    assert "service running" in logs(container_name)

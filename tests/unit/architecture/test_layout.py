"""The layout shows the architecture: libraries are imported and never run; services are run and
never imported by each other."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.common.settings import ServiceSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ROOT / "services"
LIBRARY = "common"
SERVICE_NAMES = sorted(p.name for p in SERVICES.iterdir() if p.is_dir() and p.name not in {LIBRARY, "__pycache__"})


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_service_has_its_folder() -> None:
    assert set(SERVICE_NAMES) >= {
        "cdc_ingest",
        "mapping",
        "conflict_resolver",
        "writer",
        "rate_limit_governor",
        "admin",
        "salesforce_emulator",
    }


def test_the_shared_library_is_never_run() -> None:
    assert not (SERVICES / LIBRARY / "__main__.py").exists()


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_services_do_not_import_each_other(service: str) -> None:
    others = {f"services.{name}" for name in SERVICE_NAMES if name != service}
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (SERVICES / service).rglob("*.py")
        for module in _imports(path)
        if any(module == other or module.startswith(other + ".") for other in others)
    ]
    assert offenders == []


def test_the_library_imports_no_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (SERVICES / LIBRARY).rglob("*.py")
        for module in _imports(path)
        if module.startswith("services.") and not module.startswith(f"services.{LIBRARY}")
    ]
    assert offenders == []


def test_the_example_app_uses_only_the_public_contract() -> None:
    # Internal services integrate through the protobuf contract alone, never through Duplex's code.
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (ROOT / "examples").rglob("*.py")
        for module in _imports(path)
        if module.startswith(("services", "devstack")) or (module.startswith("duplex.") and ".change." not in module)
    ]
    assert offenders == []


# Protobuf stops at the edge: generated modules are imported by a service's contract module and
# by the gRPC adapters, whose servicer or stub is itself the edge; everything else sees domain types.
GRPC_ADAPTERS = {
    "common/governor_client.py",  # the governor's client stub
    "rate_limit_governor/server.py",  # the governor's servicer
    "cdc_ingest/pubsub.py",  # Salesforce's Pub/Sub API client
    "salesforce_emulator/pubsub.py",  # the emulated Pub/Sub API servicer
}


def _is_contract(path: Path) -> bool:
    return path.name == "contract.py" or path.parent.name == "contract"


def test_generated_protobuf_is_imported_only_at_the_edge() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in SERVICES.rglob("*.py")
        if not _is_contract(path) and str(path.relative_to(SERVICES)) not in GRPC_ADAPTERS
        for module in _imports(path)
        if module.endswith(("_pb2", "_pb2_grpc")) or (module.startswith("duplex.") and module.count(".") >= 2)
    ]
    assert offenders == []


def test_only_settings_read_the_environment() -> None:
    allowed = SERVICES / LIBRARY / "settings.py"
    offenders = []
    for path in SERVICES.rglob("*.py"):
        if path == allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in {"environ", "getenv", "environb"}
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads os.{node.attr}")
    assert offenders == []


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_every_settings_class_derives_from_service_settings(service: str) -> None:
    module = importlib.import_module(f"services.{service}.settings")
    declared = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
    ]
    assert declared, f"services/{service}/settings.py declares no settings class"
    assert [cls.__name__ for cls in declared if not issubclass(cls, ServiceSettings)] == []


@pytest.mark.parametrize("service", [s for s in SERVICE_NAMES if (SERVICES / s / "app.py").exists()])
def test_every_service_holds_its_resources_in_typed_objects(service: str) -> None:
    # A ``dict[str, Any]`` of resources filled in at start-up hides what a service holds and when.
    assert ": dict[str, Any] =" not in (SERVICES / service / "app.py").read_text()


# The admin service's __main__ is its CLI (``duplex``); every long-running service starts the same way.
RUN_SERVICES = [s for s in SERVICE_NAMES if s != "admin"]


@pytest.mark.parametrize("service", RUN_SERVICES)
def test_every_service_starts_through_the_one_entry(service: str) -> None:
    path = SERVICES / service / "__main__.py"
    assert "services.common.service" in _imports(path)
    code = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#", '"""'))]
    assert len(code) <= 12, f"{path.relative_to(ROOT)} does more than hand over to main()"

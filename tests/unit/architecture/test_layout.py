"""The layout shows the architecture: libraries are imported and never run; services are run and
never imported by each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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

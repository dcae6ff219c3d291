"""The built wheel runs without the checkout: migrations, topic table and generated protobuf modules
travel inside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.topics import Topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
UV = ROOT / ".cache" / "tools" / "bin" / "uv"
TIMEOUT = 120

PROBE = """
import json

import duplex.change.v1.record_changed_pb2
import eventbus.v1.pubsub_api_pb2
import services
from services.common.db import MIGRATIONS_DIR, load_migrations
from services.common.topics import TOPIC_TABLE, load_topic_table

print(json.dumps({
    "modules": [m.__file__ for m in (services, duplex.change.v1.record_changed_pb2, eventbus.v1.pubsub_api_pb2)],
    "data": [str(MIGRATIONS_DIR), str(TOPIC_TABLE)],
    "migrations": [m.file_name for m in load_migrations()],
    "topics": sorted(load_topic_table().topics),
}))
"""


@dataclass(frozen=True)
class Installed:
    venv: Path
    python: Path
    cwd: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [str(self.python), *args], cwd=self.cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )


def _check(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.is_relative_to(ROOT)
    _check(UV, "build", "--wheel", "--out-dir", work / "dist", ROOT)
    (wheel,) = (work / "dist").glob("duplex-*.whl")
    venv = work / "venv"
    _check(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _check(UV, "pip", "install", "--offline", "--no-deps", "--python", python, wheel)
    # Dependencies come from the project's venv, listed after the wheel's own site-packages so that
    # services/ and the protobuf modules are the wheel's. That venv's .pth files are not processed,
    # so its dev-mode path to the checkout stays off sys.path.
    site_packages = Path(_check(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    (site_packages / "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    cwd = work / "elsewhere"
    cwd.mkdir()
    return Installed(venv=venv, python=python, cwd=cwd)


def test_the_admin_cli_runs_from_the_wheel(installed: Installed) -> None:
    done = installed.run("-m", "services.admin", "migrate", "--help")

    assert done.returncode == 0, done.stderr
    assert "--dsn" in done.stdout


def test_the_wheel_carries_its_migrations_topic_table_and_protobuf_modules(installed: Installed) -> None:
    done = installed.run("-c", PROBE)

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for path in [*found["modules"], *found["data"]]:
        assert Path(path).is_relative_to(installed.venv), path
    assert found["migrations"] == sorted(p.name for p in (ROOT / "deploy" / "sql").glob("*.sql"))
    assert found["topics"] == sorted(topic.value for topic in Topic)

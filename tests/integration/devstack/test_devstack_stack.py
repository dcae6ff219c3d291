"""``python -m devstack up|down|status`` as a developer runs them, in throwaway state dirs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack import processes
from devstack.paths import REPO_ROOT
from devstack.ports import port_is_free
from devstack.state import StackState, load_state, register_process
from services.common.topics import load_topic_table

pytestmark = pytest.mark.integration


def devstack(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"devstack {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def open_state_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="duplex-devstack-test-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def running_stack() -> Iterator[Path]:
    """One `up` shared by the read-only checks below; `down` (which must succeed) at the end."""
    state_dir = open_state_dir()
    devstack("up", "--state-dir", str(state_dir))
    try:
        yield state_dir
    finally:
        devstack("down", "--state-dir", str(state_dir))
        shutil.rmtree(state_dir)


async def topic_layout(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str, str]]:
    """topic -> (partitions, retention.ms, cleanup.policy), as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {"retention.ms": None, "cleanup.policy": None})
                for name in names
            ]
        )
    finally:
        await admin.close()
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described if topic["error_code"] == 0}
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            entries = resource["config_entries"]
            configs[resource["resource_name"]] = {entry["config_names"]: entry["config_value"] for entry in entries}
    return {
        name: (partitions[name], configs[name]["retention.ms"], configs[name]["cleanup.policy"])
        for name in names
        if name in partitions
    }


async def test_up_creates_every_topic_of_the_table(running_stack: Path) -> None:
    state = load_state(running_stack)
    table = load_topic_table()
    assert state.bootstrap_servers is not None

    layout = await topic_layout(state.bootstrap_servers, [spec.name for spec in table.topics.values()])

    assert layout == {
        spec.name: (spec.partitions, str(spec.retention_ms), spec.cleanup_policy) for spec in table.topics.values()
    }


async def test_up_writes_a_private_env_file_that_reaches_postgres(running_stack: Path) -> None:
    env_file = running_stack / "stack.env"
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())

    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (running_stack / "stack.json").stat().st_mode & 0o777 == 0o600
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == load_state(running_stack).bootstrap_servers
    connection = await asyncpg.connect(env["POSTGRES_DSN"])
    try:
        assert await connection.fetchval("SELECT current_database()") == "duplex"
        # `up` ran the repo's migrations.
        assert await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    finally:
        await connection.close()


async def test_postgres_runs_as_a_non_root_user_on_loopback_only(running_stack: Path) -> None:
    state = load_state(running_stack)
    postmaster = state.processes["postgres"].pid

    assert (await asyncio.to_thread(Path(f"/proc/{postmaster}").stat)).st_uid != 0
    connection = await asyncpg.connect(state.dsn)
    try:
        assert await connection.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await connection.fetchval("SHOW password_encryption") == "scram-sha-256"
    finally:
        await connection.close()


def test_up_again_keeps_the_running_servers(running_stack: Path) -> None:
    before = load_state(running_stack)

    output = devstack("up", "--state-dir", str(running_stack)).stdout

    after = load_state(running_stack)
    assert "already running" in output
    assert "0 created" in output
    assert after.processes == before.processes
    assert (after.kafka_port, after.postgres_port) == (before.kafka_port, before.postgres_port)


def test_status_lists_registered_processes(running_stack: Path) -> None:
    output = devstack("status", "--state-dir", str(running_stack)).stdout

    assert [line.split()[0] for line in output.splitlines()[:2]] == ["kafka", "postgres"]
    assert output.count("running") == 2


def ports_of(state: StackState) -> list[int]:
    return [port for port in (state.kafka_port, state.kafka_controller_port, state.postgres_port) if port]


def test_down_leaves_nothing_running_and_up_comes_back_on_the_same_ports(tmp_path: Path) -> None:
    # tmp_path is 0700: as root this also exercises the database home outside the state dir.
    state_dir = tmp_path / "var"
    devstack("up", "--state-dir", str(state_dir))
    first = load_state(state_dir)
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        register_process("sleeper", sleeper.pid, state_dir=state_dir)
        server_pids = [record.pid for record in first.processes.values()]

        output = devstack("down", "--state-dir", str(state_dir)).stdout

        assert "stopped: sleeper, postgres, kafka" in output
        assert sleeper.wait(timeout=5) is not None
        assert not any(processes.is_running(pid) for pid in server_pids)
        assert not processes.pids_mentioning(str(state_dir))
        assert first.postgres_home is not None
        assert not processes.pids_mentioning(first.postgres_home)
        assert all(port_is_free(port) for port in ports_of(first))
        assert "nothing registered" in devstack("status", "--state-dir", str(state_dir)).stdout

        again = devstack("up", "--state-dir", str(state_dir)).stdout
        assert ports_of(load_state(state_dir)) == ports_of(first)
        assert "0 created" in again
        assert "nothing pending" in again
        devstack("down", "--state-dir", str(state_dir))
    finally:
        sleeper.kill()
        sleeper.wait()
        if first.postgres_home and not Path(first.postgres_home).is_relative_to(state_dir):
            shutil.rmtree(first.postgres_home, ignore_errors=True)


def test_down_with_nothing_up_is_fine(tmp_path: Path) -> None:
    assert "nothing was running" in devstack("down", "--state-dir", str(tmp_path)).stdout


async def test_register_process_refuses_a_dead_pid(tmp_path: Path) -> None:
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()

    with pytest.raises(ProcessLookupError):
        register_process("ghost", dead.pid, state_dir=tmp_path)

"""What devstack writes for the broker, the database and the services, checked without running them."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.kafka import KafkaPorts, new_cluster_id, render_log4j2, render_properties, server_properties
from devstack.pipeline import Pipeline, PipelineConfig
from devstack.postgres import OsAccount, can_traverse, dsn_with_database, render_conf
from devstack.state import ProcessRecord, StackState, new_vault_keys, render_env
from services.common.topic_admin import new_topics
from services.common.topics import Topic, load_topic_table
from services.common.vault import Keyring

pytestmark = pytest.mark.unit


def parse_properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {key: value for key, _, value in (line.partition("=") for line in lines)}


def test_server_properties_bind_both_listeners_to_loopback_on_the_given_ports() -> None:
    props = parse_properties(render_properties(server_properties(KafkaPorts(9101, 9102), Path("/s/data"))))

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9101,CONTROLLER://127.0.0.1:9102"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9101"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9102"
    assert props["process.roles"] == "broker,controller"
    assert props["log.dirs"] == "/s/data"


def test_server_properties_suit_a_single_node() -> None:
    props = server_properties(KafkaPorts(1, 2), Path("/d"))

    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "false"


def test_properties_escape_backslashes() -> None:
    assert parse_properties(render_properties({"log.dirs": r"C:\kafka"}))["log.dirs"] == r"C:\\kafka"


def test_log4j2_config_sends_everything_to_the_given_file() -> None:
    text = render_log4j2(Path("/state/logs/server.log"))

    assert "appender.file.fileName = /state/logs/server.log" in text
    assert "rootLogger.appenderRef.file.ref = file" in text


def test_cluster_ids_are_16_random_bytes_in_unpadded_base64url() -> None:
    ids = {new_cluster_id() for _ in range(50)}

    assert len(ids) == 50
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_postgres_conf_listens_on_loopback_only() -> None:
    text = render_conf(port=6543, socket_dir=Path("/s/run"), durable=True)

    assert "listen_addresses = '127.0.0.1'" in text
    assert "port = 6543" in text
    assert "unix_socket_directories = '/s/run'" in text
    assert "fsync" not in text


def test_throwaway_postgres_skips_fsync() -> None:
    assert "fsync = off" in render_conf(port=1, socket_dir=Path("/r"), durable=False)


def test_dsn_with_database_keeps_credentials_host_and_options() -> None:
    dsn = "postgresql://duplex:pw@127.0.0.1:5432/duplex?sslmode=disable"

    assert dsn_with_database(dsn, "test_1") == "postgresql://duplex:pw@127.0.0.1:5432/test_1?sslmode=disable"


ACCOUNT = OsAccount(name="duplex", uid=999, gid=995, groups=frozenset({995, 50}))


def fake_stat(modes: dict[str, tuple[int, int, int]]) -> Callable[[Path], os.stat_result]:
    """A stat() over made-up directories: path -> (permission bits, owner uid, group gid)."""

    def lookup(path: Path) -> os.stat_result:
        if str(path) not in modes:
            raise FileNotFoundError(path)
        mode, uid, gid = modes[str(path)]
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))

    return lookup


OPEN = (0o755, 0, 0)


@pytest.mark.parametrize(
    ("leaf", "modes", "expected"),
    [
        ("/work/var", {"/": OPEN, "/work": OPEN, "/work/var": OPEN}, True),
        ("/root/var", {"/": OPEN, "/root": (0o700, 0, 0), "/root/var": OPEN}, False),
        ("/home/var", {"/": OPEN, "/home": (0o750, 0, 50), "/home/var": OPEN}, True),
        ("/home/var", {"/": OPEN, "/home": (0o750, 0, 7), "/home/var": OPEN}, False),
        ("/mine/var", {"/": OPEN, "/mine": (0o700, 999, 0), "/mine/var": OPEN}, True),
        ("/other/var", {"/": OPEN, "/other": (0o701, 1000, 1000), "/other/var": OPEN}, True),
        ("/other/var", {"/": OPEN, "/other": (0o750, 1000, 1000), "/other/var": OPEN}, False),
        ("/tmp/not-yet", {"/": OPEN, "/tmp": OPEN}, True),
    ],
    ids=["open", "root-home", "via-group", "other-group", "own", "x-for-others", "closed", "missing-leaf"],
)
def test_can_traverse_checks_every_directory_above(
    leaf: str, modes: dict[str, tuple[int, int, int]], expected: bool
) -> None:
    assert can_traverse(Path(leaf), ACCOUNT, fake_stat(modes)) is expected


def test_root_can_traverse_anything() -> None:
    root = OsAccount(name="root", uid=0, gid=0, groups=frozenset())

    assert can_traverse(Path("/x"), root, fake_stat({"/": OPEN, "/x": (0o000, 5, 5)}))


def test_new_topics_follow_the_table_under_the_prefix() -> None:
    table = load_topic_table()
    topics = {topic.name: topic for topic in new_topics(table, "p.")}

    assert len(topics) == len(table.topics)
    for spec in table.topics.values():
        topic = topics["p." + spec.name]
        assert topic.num_partitions == spec.partitions
        assert topic.replication_factor == 1
        assert topic.topic_configs == {
            "retention.ms": str(spec.retention_ms),
            "cleanup.policy": spec.cleanup_policy,
        }
    assert topics["p." + table.topics[Topic.TENANTS].name].topic_configs["cleanup.policy"] == "compact"


@pytest.mark.parametrize(("replication", "min_insync"), [(1, None), (2, None), (3, "2"), (5, "3")])
def test_a_replicated_topic_takes_writes_only_a_majority_has(replication: int, min_insync: str | None) -> None:
    for topic in new_topics(load_topic_table(), "p.", replication):
        assert topic.replication_factor == replication
        assert topic.topic_configs.get("min.insync.replicas") == min_insync


def test_stack_env_names_what_the_settings_read() -> None:
    state = StackState(
        bootstrap_servers="127.0.0.1:1",
        dsn="postgresql://u:p@127.0.0.1:2/duplex",
        topic_prefix="dev.",
        processes={"kafka": ProcessRecord(pid=1, start_ticks=1)},
    )

    assert render_env(state).splitlines() == [
        "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1",
        "KAFKA_TOPIC_PREFIX=dev.",
        "POSTGRES_DSN=postgresql://u:p@127.0.0.1:2/duplex",
    ]


def test_the_local_vault_key_is_one_fresh_kek_and_reaches_stack_env() -> None:
    first, second = new_vault_keys(), new_vault_keys()
    state = StackState(bootstrap_servers="127.0.0.1:1", dsn="postgresql://u:p@127.0.0.1:2/duplex", vault_keys=first)

    assert first != second
    assert Keyring.parse(first).ids == ("local",)
    assert render_env(state).splitlines()[-1] == f"VAULT_KEYS={first}"


def test_the_admin_api_and_the_services_that_call_salesforce_get_the_vault_key(tmp_path: Path) -> None:
    keys = new_vault_keys()
    config = PipelineConfig(
        tmp_path, "127.0.0.1:1", "postgresql://u:p@127.0.0.1:2/duplex", "127.0.0.1:3", "ca.pem", vault_keys=keys
    )

    services = Pipeline(config).services

    assert {name for name, s in services.items() if s.settings.get("VAULT_KEYS") == keys} == {
        "admin",
        "cdc-ingest",
        "writer",
    }
    assert "VAULT_KEYS" not in Pipeline(replace(config, vault_keys=None)).services["writer"].settings


def test_the_admin_api_serves_on_its_own_port_and_every_service_runs_as_development(tmp_path: Path) -> None:
    config = PipelineConfig(tmp_path, "127.0.0.1:1", "postgresql://u:p@127.0.0.1:2/duplex", "127.0.0.1:3", "ca.pem")

    pipeline = Pipeline(config)
    admin = pipeline.services["admin"].settings

    assert pipeline.admin_url == f"http://127.0.0.1:{admin['DUPLEX_ADMIN_PORT']}"
    assert admin["DUPLEX_ADMIN_SALESFORCE_CA_FILE"] == "ca.pem"
    # The emulator listens on 127.0.0.1, which the deployment policy allows only in development.
    assert {name for name, s in pipeline.services.items() if s.settings.get("DUPLEX_DEVELOPMENT") == "true"} == {
        name for name in pipeline.services if name != "partners-app"
    }

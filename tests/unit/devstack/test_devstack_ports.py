"""Port picking: distinct, bindable, and stable across restarts of the stack."""

from __future__ import annotations

import socket

import pytest

from devstack.ports import HOST, pick_free_ports, port_is_free, reuse_or_pick

pytestmark = pytest.mark.unit


def test_picked_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports(5)

    assert len(set(ports)) == 5
    assert all(port_is_free(port) for port in ports)


def test_a_listening_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


def test_free_saved_ports_are_kept_and_missing_ones_picked() -> None:
    kept = pick_free_ports(1)[0]

    chosen = reuse_or_pick({"kafka": kept, "postgres": None}, in_use_by_us=set())

    assert chosen["kafka"] == kept
    assert chosen["postgres"] not in (None, kept)


def test_a_port_taken_by_someone_else_is_replaced_but_ours_is_kept() -> None:
    with socket.socket() as theirs, socket.socket() as ours:
        theirs.bind((HOST, 0))
        theirs.listen()
        ours.bind((HOST, 0))
        ours.listen()
        their_port, our_port = theirs.getsockname()[1], ours.getsockname()[1]

        chosen = reuse_or_pick({"a": their_port, "b": our_port}, in_use_by_us={"b"})

    assert chosen["a"] != their_port
    assert chosen["b"] == our_port
    assert chosen["a"] != chosen["b"]

"""Free TCP ports on 127.0.0.1.

The kernel hands out a free port when binding to port 0; holding every socket open until all are
chosen keeps one call from returning the same port twice.
"""

from __future__ import annotations

import contextlib
import socket

HOST = "127.0.0.1"


def pick_free_ports(count: int) -> list[int]:
    """``count`` distinct ports nobody listens on right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind: connections of a stopped server lingering in TIME_WAIT do not
        # keep a restarted one off its port, only a live listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def reuse_or_pick(saved: dict[str, int | None], in_use_by_us: set[str]) -> dict[str, int]:
    """Keep each saved port that is still free (or held by our own running server); pick the rest.

    Reusing ports keeps ``var/stack.env`` valid across ``down``/``up``, so a developer's shell
    does not need re-sourcing.
    """
    chosen: dict[str, int] = {}
    missing = []
    for name, port in saved.items():
        if port is not None and (name in in_use_by_us or port_is_free(port)):
            chosen[name] = port
        else:
            missing.append(name)
    taken = set(chosen.values())
    fresh = [p for p in pick_free_ports(len(missing) + len(taken)) if p not in taken]
    chosen.update(zip(missing, fresh, strict=False))
    return chosen

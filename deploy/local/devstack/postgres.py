"""A project-local PostgreSQL 15 cluster on 127.0.0.1, run as a non-root OS user.

PostgreSQL refuses to run as root, and CI machines run as root, so when we are root the server
runs as the system user ``duplex`` (created on first use) through ``setpriv``, which execs rather
than forks: the pid we hold is the postmaster's own. Its files live under one home directory:
``data/`` (the cluster), ``run/`` (the Unix socket), ``postgres.log``, ``postgres.pid`` and
``password`` (0600, the generated password of the database superuser ``duplex``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from devstack import processes
from devstack.paths import POSTGRES_BIN_DIR
from devstack.server import LocalServer

HOST = "127.0.0.1"
SERVICE_ACCOUNT = "duplex"
DATABASE = "duplex"
DB_USER = "duplex"
_CONF_NAME = "duplex.conf"
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def dsn_with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database on the same server, as the same user."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


class PostgresStartError(RuntimeError):
    """The cluster could not be created or did not become ready."""


@dataclass(frozen=True)
class OsAccount:
    """The OS identity the server runs as."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]


def account_named(name: str) -> OsAccount:
    entry = pwd.getpwnam(name)
    groups = frozenset(os.getgrouplist(name, entry.pw_gid))
    return OsAccount(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)


def server_account(name: str = SERVICE_ACCOUNT) -> OsAccount:
    """Who runs the server: ourselves, or (when we are root) the system user ``name``."""
    if os.geteuid() != 0:
        return account_named(pwd.getpwuid(os.geteuid()).pw_name)
    try:
        return account_named(name)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # 9 = the name was taken in the meantime (another test session won the race): fine.
    if result.returncode not in (0, 9):
        msg = f"useradd {name} failed: {result.stderr.strip()}"
        raise PostgresStartError(msg)
    return account_named(name)


def can_traverse(path: Path, account: OsAccount, lstat: Callable[[Path], os.stat_result] = os.stat) -> bool:
    """Whether ``account`` may enter ``path`` and every directory above it (root always may)."""
    if account.uid == 0:
        return True
    for directory in (path, *path.parents):
        try:
            st = lstat(directory)
        except FileNotFoundError:
            continue
        if st.st_uid == account.uid:
            needed = stat.S_IXUSR
        elif st.st_gid == account.gid or st.st_gid in account.groups:
            needed = stat.S_IXGRP
        else:
            needed = stat.S_IXOTH
        if not st.st_mode & needed:
            return False
    return True


def render_conf(*, port: int, socket_dir: Path, durable: bool) -> str:
    """Our settings, included from postgresql.conf and rewritten on every start."""
    lines = [
        "# Written by devstack on every start; edit devstack/postgres.py instead.",
        f"listen_addresses = '{HOST}'",
        f"port = {port}",
        f"unix_socket_directories = '{socket_dir}'",
        "unix_socket_permissions = 0700",
        "password_encryption = 'scram-sha-256'",
        # Every test and service replica holds a pool; 100 runs out during a full test run.
        "max_connections = 300",
        "shared_buffers = 128MB",
        "log_min_messages = warning",
        "log_line_prefix = '%m [%p] %q%u@%d '",
    ]
    if not durable:
        # Test clusters are thrown away. Only OS-crash safety is given up: a killed postgres
        # still loses nothing, since WAL reaches the kernel before each commit returns.
        lines += ["fsync = off", "full_page_writes = off"]
    return "\n".join(lines) + "\n"


class PostgresServer(LocalServer):
    """One PostgreSQL cluster whose files all live under ``home``."""

    ready_within = 60.0

    def __init__(
        self,
        home: Path,
        port: int,
        *,
        bin_dir: Path = POSTGRES_BIN_DIR,
        account: OsAccount | None = None,
        durable: bool = True,
    ) -> None:
        self.home = home
        self.port = port
        self.bin_dir = bin_dir
        self.account = account or server_account()
        self.durable = durable
        self.data_dir = home / "data"
        self.socket_dir = home / "run"
        self.log_file = home / "postgres.log"
        self.pid_file = home / "postgres.pid"
        self.password_file = home / "password"
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    @property
    def dsn(self) -> str:
        """Superuser DSN for the ``duplex`` database, over TCP with the generated password."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{DB_USER}:{self.password}@{HOST}:{self.port}/{database}"

    @property
    def marker(self) -> str:
        return str(self.data_dir)

    def _as_account(self, argv: list[str]) -> list[str]:
        if self.account.uid == os.geteuid():
            return argv
        return [
            "setpriv",
            f"--reuid={self.account.uid}",
            f"--regid={self.account.gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}

    def _own(self, path: Path) -> None:
        if self.account.uid != os.geteuid():
            os.chown(path, self.account.uid, self.account.gid)

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._own(self.home)
        self.home.chmod(0o700 if self.account.uid == os.geteuid() else 0o755)
        if not can_traverse(self.home, self.account):
            msg = (
                f"user {self.account.name} cannot reach {self.home}: a directory above it is closed "
                "to them; use a state directory outside /root (or any 0700 directory)"
            )
            raise PostgresStartError(msg)
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        self.socket_dir.chmod(0o700)
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            msg = f"socket path {socket_path} is longer than {_MAX_SOCKET_PATH} bytes; use a shorter state dir"
            raise PostgresStartError(msg)

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        result = subprocess.run(
            self._as_account(argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.home,
            check=False,
        )
        if result.returncode != 0:
            msg = f"{Path(argv[0]).name} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            raise PostgresStartError(msg)

    def _initdb(self) -> None:
        """Create the cluster, its superuser with a fresh password, and the ``duplex`` database."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        password = secrets.token_urlsafe(24)
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(password + "\n")
        # initdb reads the password from a file the server account can read; it lives only
        # for this call.
        pwfile = self.home / "initdb.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    f"--pgdata={self.data_dir}",
                    f"--username={DB_USER}",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\ninclude_if_exists = '{_CONF_NAME}'\n")
        # Single-user mode: no port, no auth, no need to wait for a server to come up.
        self._run(
            [str(self.bin_dir / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
            stdin=f"CREATE DATABASE {DATABASE};\n",
        )

    def start(self) -> None:
        """Create the cluster on first use and launch the postmaster; a running one is kept."""
        if self.running:
            return
        self._prepare_home()
        self._initdb()
        conf = self.data_dir / _CONF_NAME
        conf.write_text(render_conf(port=self.port, socket_dir=self.socket_dir, durable=self.durable))
        self._own(conf)
        self._child = processes.spawn(
            self._as_account([str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]),
            log_file=self.log_file,
            env=self._env(),
            cwd=self.home,
        )
        self.pid_file.write_text(f"{self._child.pid}\n")

    async def wait_ready(self, within: float | None = None) -> None:
        """Return once a password login to the ``duplex`` database succeeds."""
        within = within or self.ready_within
        deadline = time.monotonic() + within
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                msg = f"postgres exited while starting; end of {self.log_file}:\n{self._logs()}"
                raise PostgresStartError(msg)
            try:
                connection = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                # "the database system is starting up" arrives as a PostgresError.
                last_error = error
                await asyncio.sleep(0.1)
                continue
            await connection.close()
            return
        msg = f"postgres not ready after {within:.0f}s ({last_error!r}); end of log:\n{self._logs()}"
        raise PostgresStartError(msg)

    def _logs(self) -> str:
        return processes.log_tail(self.log_file)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open sessions, checkpoint); SIGKILL after ``timeout``.

        SIGTERM would be a "smart" shutdown that waits for every client to disconnect.
        """
        pid = self.pid
        if pid is not None:
            processes.terminate(pid, sig=signal.SIGINT, timeout=timeout, child=self._child)
        self._forget()

    def __repr__(self) -> str:
        return f"PostgresServer({HOST}:{self.port}, pid={self.pid}, home={self.home})"

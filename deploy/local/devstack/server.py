"""What every server the local stack runs has in common: its pid, a crash, a restart."""

from __future__ import annotations

import abc
import asyncio
import subprocess
from pathlib import Path

from devstack import processes


class LocalServer(abc.ABC):
    """A server process with a pid file; subclasses say how to start, stop and wait for it."""

    pid_file: Path
    _child: subprocess.Popen[bytes] | None
    # How long a (re)start may take before it counts as failed.
    ready_within: float = 60.0

    @property
    @abc.abstractmethod
    def marker(self) -> str:
        """A path on the server's command line that tells our process from any other with its pid."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    async def wait_ready(self, within: float | None = None) -> None: ...

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (also when another process started it)."""
        # Our own child is trusted as is: right after spawning, its command line may not show
        # the marker yet (setpriv and the server are still exec'ing).
        if self._child is not None and self._child.poll() is None:
            return self._child.pid
        return processes.pid_if_ours(processes.read_pid_file(self.pid_file), self.marker)

    @property
    def running(self) -> bool:
        return self.pid is not None

    def kill(self) -> None:
        """Crash the server (SIGKILL to its process group): no controlled shutdown, as after a power cut."""
        pid = self.pid
        if pid is not None:
            processes.kill(pid, child=self._child)
        self._forget()

    async def restart(self, within: float | None = None) -> None:
        """Stop, start again on the same ports and data, and wait until ready."""
        await asyncio.to_thread(self.stop)
        self.start()
        await self.wait_ready(within)

    def _forget(self) -> None:
        if self._child is not None:
            self._child.poll()
        self._child = None
        self.pid_file.unlink(missing_ok=True)

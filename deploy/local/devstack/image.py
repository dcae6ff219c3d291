"""Building Duplex's OCI images with podman: no Docker engine, no registry (``make image``).

``python -m devstack.image build`` makes ``localhost/duplex:latest`` from ``deploy/image/Containerfile``
(``--target emulator``: ``localhost/duplex-emulator:latest``) and prints its size. No registry is
reachable here, so the base is a Debian 12 root file system made from the package mirror with
mmdebstrap (Essential packages plus Python 3.11) and imported as ``localhost/duplex-base:<recipe>``;
its tarball is kept in ``.cache/image`` and the image stays in podman's storage, so only a changed
recipe builds it again. Users with a registry build the same Containerfile FROM the public Python image.

What works on these machines (root, no systemd, cgroup v1 beside v2): builds with ``--isolation chroot``
(crun, podman's default runtime, refuses hybrid cgroups), containers with runc and rlimits no higher
than the host's hard limits (podman's default of 1048576 open files is refused), processes no more than
``kernel.pid_max`` (above it runc's setrlimit is refused here, whatever the hard limit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.install import InstallError, ensure_image_tools
from devstack.paths import CACHE_DIR, REPO_ROOT

CONTAINERFILE = REPO_ROOT / "deploy" / "image" / "Containerfile"
IMAGES = {"services": "localhost/duplex:latest", "emulator": "localhost/duplex-emulator:latest"}
BASE_REPOSITORY = "localhost/duplex-base"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Debian 12's python3 is 3.11. The venv module lets the build stage make its venvs; libstdc++ is what
# the grpcio and protoc wheels link against beyond the Essential set.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "libstdc++6", "ca-certificates")
_UNSHIPPED = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
# The host's trust store, handed to the build's downloads: behind a TLS-inspecting proxy the base's
# stock store would refuse PyPI.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RUNTIME = "runc"
PID_MAX = Path("/proc/sys/kernel/pid_max")
MB = 1_000_000


class ImageBuildError(RuntimeError):
    """A build step failed; the message names it."""


@dataclass(frozen=True)
class Built:
    tag: str
    size_bytes: int
    seconds: float


def base_recipe() -> list[str]:
    """mmdebstrap's arguments but the output: also what the base's tag is a digest of."""
    return [
        "--variant=essential",
        # Without it Debian's usrmerge (and Perl, 47 MB) comes along to merge /usr.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        f"--include={','.join(BASE_PACKAGES)}",
        *(f"--dpkgopt=path-exclude={path}" for path in _UNSHIPPED),
        SUITE,
    ]


def base_tag() -> str:
    digest = hashlib.sha256(json.dumps(base_recipe()).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{digest}"


def podman(*args: str, capture: bool = False) -> str:
    done = subprocess.run(["podman", *args], check=False, text=True, capture_output=capture)
    if done.returncode != 0:
        detail = f": {done.stderr.strip()}" if capture else ""
        msg = f"`podman {' '.join(args[:2])} …` failed (exit {done.returncode}){detail}"
        raise ImageBuildError(msg)
    return done.stdout if capture else ""


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag, capture=True).strip())


def ensure_base() -> str:
    """The local Debian base's tag, built and imported unless podman already has it."""
    tag = base_tag()
    if image_exists(tag):
        return tag
    tarball = CACHE_DIR / "image" / f"base-{tag.rsplit(':', 1)[1]}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed last, so an interrupted run never leaves a truncated tarball behind.
        partial = tarball.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        print(f"building the Debian {SUITE} base from {MIRROR} (mmdebstrap) …", file=sys.stderr)
        # dpkg's chatter is kept for a failure's message only.
        done = subprocess.run(
            ["mmdebstrap", "--quiet", *base_recipe(), str(partial), MIRROR],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            tail = "\n".join(done.stdout.splitlines()[-20:])
            msg = f"mmdebstrap failed (exit {done.returncode}) building the base from {MIRROR}:\n{tail}"
            raise ImageBuildError(msg)
        partial.rename(tarball)
    podman("import", "--quiet", str(tarball), tag, capture=True)
    return tag


def build(target: str = "services") -> Built:
    """Build one of the Containerfile's final stages FROM the local base; its tag, size and time."""
    if target not in IMAGES:
        msg = f"unknown target {target!r}; one of {', '.join(IMAGES)}"
        raise ImageBuildError(msg)
    began = time.monotonic()
    base = ensure_base()
    tag = IMAGES[target]
    secret = ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
    podman(
        "build",
        "--isolation=chroot",
        "--network=host",
        "--layers",
        "--pull=never",
        *secret,
        f"--build-arg=BASE={base}",
        f"--target={target}",
        f"--file={CONTAINERFILE}",
        f"--tag={tag}",
        str(REPO_ROOT),
    )
    return Built(tag=tag, size_bytes=image_size(tag), seconds=time.monotonic() - began)


def run_command(*options: str) -> list[str]:
    """``podman run`` as it works here: runc, and rlimits the host allows."""
    infinity = resource.RLIM_INFINITY
    pid_max = int(PID_MAX.read_text()) if PID_MAX.is_file() else infinity
    limits = []
    ceilings = (("nofile", resource.RLIMIT_NOFILE, infinity), ("nproc", resource.RLIMIT_NPROC, pid_max))
    for name, limit, ceiling in ceilings:
        finite = [value for value in (resource.getrlimit(limit)[1], ceiling) if value != infinity]
        if finite:
            limits.append(f"--ulimit={name}={min(finite)}:{min(finite)}")
    return ["podman", "run", f"--runtime={RUNTIME}", "--rm", *limits, *options]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.image", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build an image and print its size")
    build_parser.add_argument("--target", choices=sorted(IMAGES), default="services")
    commands.add_parser("run-command", help="print the `podman run` prefix that works on this machine")
    args = parser.parse_args(argv)
    if args.command == "run-command":
        print(" ".join(run_command()))
        return 0
    try:
        ensure_image_tools()
        built = build(args.target)
    except (InstallError, ImageBuildError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{built.tag}: {built.size_bytes / MB:.0f} MB (built in {built.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

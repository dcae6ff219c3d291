"""How a benchmark reports: the machine, its parameters, and named figures."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    # The target an issue sets for this figure, if any, and whether higher is better.
    target: float | None = None
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        met = self.value >= self.target if self.higher_is_better else self.value <= self.target
        sign = ">=" if self.higher_is_better else "<="
        return f"{'met' if met else 'MISSED'} (target {sign} {self.target:,g})"


@dataclass
class Result:
    benchmark: str
    parameters: dict[str, object]
    figures: list[Figure] = field(default_factory=list)
    # Free-text lines printed after the figures (what was measured where, what is missing).
    notes: list[str] = field(default_factory=list)


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = "unknown cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB"
    return (
        f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}, {datetime.now(UTC):%Y-%m-%d}"
    )


def rss_mib(pid: int) -> float:
    """Peak resident memory of a process, in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def render(result: Result) -> str:
    params = ", ".join(f"{k}={v}" for k, v in result.parameters.items())
    lines = [f"## {result.benchmark}", f"parameters: {params}"]
    # A ratio's second decimal is what a 0.9 target is decided on.
    lines += [
        f"  {f.name:<44} {f.value:>14,.{2 if f.unit == 'ratio' else 1}f} {f.unit:<12} {f.verdict}"
        for f in result.figures
    ]
    lines += result.notes
    return "\n".join(lines)


def spread(ratio: tuple[float, float, float]) -> str:
    """A median ratio's name suffix giving its rounds' range, from ``bench.load.median_ratio``."""
    return f" (median; rounds {ratio[1]:.2f}-{ratio[2]:.2f})"

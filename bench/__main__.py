"""Run the benchmarks and print their figures: ``python -m bench [name ...]``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import (
    cdc_ingest,
    console,
    emulator,
    filters,
    isolation,
    pause,
    pipeline,
    quarantine,
    suggestions,
    sync,
    writer,
)
from bench.report import Result, machine, render

BENCHMARKS: dict[str, Callable[[], Result]] = {
    "emulator": emulator.run,
    "cdc_ingest": cdc_ingest.run,
    "filters": filters.run,
    "sync": sync.run,
    "writer": writer.run,
    "isolation": isolation.run,
    "quarantine": quarantine.run,
    "pause": pause.run,
    "pipeline": pipeline.run,
    "suggestions": suggestions.run,
    "console": console.run,
}


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    print(f"# Duplex benchmarks\nmachine: {machine()}\n")
    for name in names or list(BENCHMARKS):
        print(render(BENCHMARKS[name]()), "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m devstack.launch <marker> <module> [args...]``: run ``python -m <module> [args...]``.

The pipeline's services are started through this wrapper only so that their command line names
the stack's state dir (``<marker>``): a recycled pid is then never taken for one of ours, and
``python -m devstack down`` finds a service whose pid record was lost. Nothing else changes: the
module runs as ``__main__`` with ``sys.argv`` as if started directly.
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m devstack.launch <marker> <module> [args...]")
    module, args = sys.argv[2], sys.argv[3:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Data files Duplex reads at run time (migrations, the topic table), wherever Duplex runs from.

Their source of truth is the checkout's ``deploy/``. The wheel build (``pyproject.toml``) copies
them under ``services/common/data/``, so an installed Duplex finds them with no checkout around;
running from the checkout (``uv sync`` installs it in dev mode) reads ``deploy/`` itself.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def data_path(packaged: str, in_checkout: str) -> Path:
    """The installed copy ``services/common/data/<packaged>`` if there is one, else
    ``<checkout>/<in_checkout>``."""
    shipped = files("services.common").joinpath("data", packaged)
    # Installers unpack wheels, so an installed copy is an ordinary file or folder.
    if isinstance(shipped, Path) and shipped.exists():
        return shipped
    return _CHECKOUT / in_checkout

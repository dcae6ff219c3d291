"""``python -m services.admin``: the same CLI as the ``duplex`` console script."""

from services.admin.cli import app

app(prog_name="duplex")

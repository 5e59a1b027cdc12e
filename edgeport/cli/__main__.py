"""``python -m edgeport.cli``: the same as the ``edgeport`` command."""

from edgeport.cli import app

app()

"""``python -m cyxwiz`` is the ``cyxwiz`` command."""

from cyxwiz.cli.main import run

run()

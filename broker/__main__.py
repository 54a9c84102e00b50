"""``python -m broker`` is the same as the ``broker`` console script."""

from broker.cli.main import entry

entry()

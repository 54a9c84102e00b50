"""The ``broker`` command: thin commands over the client and, for ``serve``, the daemon."""

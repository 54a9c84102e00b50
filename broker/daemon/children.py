"""How the daemon starts a Python process of its own: isolated from where it was started.

``python -m MODULE`` puts the working directory first on the import path, and
``PYTHONPATH``, ``PYTHONSTARTUP`` or a user's ``sitecustomize`` could put anything else
there: a daemon started from ``/tmp`` would then run another user's ``broker/redeem.py``
and hand it a refresh token. So a child runs with ``-I`` (no ``PYTHON*`` variables, no
user site, no working directory or script directory on the path), from ``/``, and is
told explicitly where the daemon found its own code: the daemon's import path without
the working directory.
"""

from __future__ import annotations

import os
import sys

CWD = "/"
"""A child's working directory: nothing another user can write to."""


def import_path() -> list[str]:
    """The daemon's own import path, absolute entries only, without its working directory."""
    cwd = os.getcwd()
    return [entry for entry in sys.path if os.path.isabs(entry) and os.path.normpath(entry) != cwd]


def python_module(module: str) -> list[str]:
    """The argv of ``python -m MODULE``, isolated: ``-I``, the daemon's import path, nothing else."""
    boot = (
        f"import runpy, sys; sys.path[:0] = {import_path()!r}; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-I", "-c", boot]

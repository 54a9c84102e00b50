"""The floor of the daemon's stack: a bare interpreter importing aiohttp's server and AES-GCM.

The daemon cannot weigh less, nor start sooner, than that: its idle RSS and its socket
activation are read against this process's RSS and wall time.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

IMPORTS = "import aiohttp.web; from cryptography.hazmat.primitives.ciphers.aead import AESGCM"
SHOWN = "python -c 'import aiohttp.web, AESGCM'"
RSS = IMPORTS + "; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"


def rss_kib(runs: int = 3) -> int:
    """Median RSS of the floor once its imports are done."""
    samples = [int(subprocess.run([sys.executable, "-c", RSS], capture_output=True, text=True, check=True).stdout)
               for _ in range(runs)]  # fmt: skip
    return int(statistics.median(samples))


def import_seconds() -> float:
    """Wall time of one whole floor process: start, imports, exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - start

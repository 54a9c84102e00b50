"""How long ``broker token NAME`` takes as a whole process, next to a bare Python start.

Prints a table: median and p90 wall time over N runs of
- ``python -c 'import socket, json'`` (the floor: an interpreter that opens a socket),
- ``broker token bench`` against a running daemon holding a credential, the socket named
  by ``BROKER_SOCKET``,
- the same with the socket named by ``[daemon] socket`` in the config file instead. The
  file was written a minute earlier, as a user's config was: the first client parses it
  (tomllib) and remembers its socket in the runtime directory, the others read that.
All use the interpreter the console script uses (the virtualenv's).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS = int(os.environ.get("BENCH_RUNS", "40"))


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def paired_ratio(samples: list[float], floors: list[float]) -> float:
    """The median of each run's ratio to the floor run just before it.

    Load that comes and goes moves both of a pair, and the median of the pairs' ratios stays put.
    """
    return statistics.median(t / f for t, f in zip(samples, floors, strict=True))


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9) - 1] * 1000


FLOOR = "python -c 'import socket, json'"
TOKEN = "broker token bench"
TOKEN_CONFIG = "  socket from config.toml"


def measure(runs: int = RUNS) -> dict[str, list[float]]:
    """Seconds of each run of the floor and of ``broker token``, taking turns after a warm-up."""
    from bench.daemon_fixture import running_daemon_with_token

    with (
        tempfile.TemporaryDirectory(prefix="bkb-", dir="/tmp") as root,
        running_daemon_with_token(Path(root)) as daemon,
    ):
        env = daemon.env
        from_config = config_env(Path(root), env)
        script = str(Path(sys.executable).with_name("broker"))
        floor = [sys.executable, "-c", "import socket, json"]
        entry = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "broker"]
        token = [*entry, "token", "bench"]
        for _ in range(3):
            timed(floor, env), timed(token, env), timed(token, from_config)
        rows: dict[str, list[float]] = {FLOOR: [], TOKEN: [], TOKEN_CONFIG: []}
        for _ in range(runs):
            rows[FLOOR].append(timed(floor, env))
            rows[TOKEN].append(timed(token, env))
            rows[TOKEN_CONFIG].append(timed(token, from_config))
    return rows


def config_env(root: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with the socket named by a config file written a minute ago, not by ``BROKER_SOCKET``."""
    config = root / "client-config.toml"
    config.write_text(f'[daemon]\nsocket = "{env["BROKER_SOCKET"]}"\n\n' + Path(env["BROKER_CONFIG"]).read_text())
    written = time.time_ns() - 60 * 1_000_000_000
    os.utime(config, ns=(written, written))
    return {**{k: v for k, v in env.items() if k != "BROKER_SOCKET"}, "BROKER_CONFIG": str(config)}


def editable_install() -> bool:
    site = Path(sys.executable).parent.parent / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return any("__editable__" in name for name in os.listdir(site / "site-packages"))


def main() -> None:
    rows = measure()
    base = summary(rows[FLOOR])[0]
    print(f"interpreter {sys.executable} ({'editable' if editable_install() else 'regular'} install), {RUNS} runs each")
    print(f"{'command':<36} {'median ms':>10} {'p90 ms':>8} {'x floor':>8} {'paired':>8}")
    for name, samples in rows.items():
        median, p90 = summary(samples)
        paired = paired_ratio(samples, rows[FLOOR])
        print(f"{name:<36} {median:>10.1f} {p90:>8.1f} {median / base:>8.2f} {paired:>8.2f}")


if __name__ == "__main__":
    main()

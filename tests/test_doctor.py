"""``broker doctor``: every check, with and without the daemon, and an exit status that says whether one failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import DaemonProcess


def checks(daemon: DaemonProcess, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    result = daemon.cli("doctor", "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    found: dict[str, dict[str, str]] = {}
    for check in json.loads(result.stdout):
        found.setdefault(check["name"], check)
    return result.returncode, found


def test_doctor_works_while_the_daemon_is_down_and_says_how_to_start_it(daemon: DaemonProcess):
    status, found = checks(daemon)
    assert status == 1
    assert found["config"]["status"] == "ok"
    daemon_check = found.get("daemon") or found["socket"]
    assert daemon_check["status"] == "fail" and "broker serve" in daemon_check["fix"]
    for name in ("permissions", "store", "keyring", "followed files", "proxy", "clock", "unit"):
        assert name in found, f"{name} is checked without the daemon too"


def test_doctor_passes_on_a_healthy_installation(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("doctor")
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout
    _, found = checks(daemon)
    assert found["daemon"]["status"] == "ok" and str(daemon.socket_path) in found["daemon"]["detail"]
    assert found["store"]["detail"].startswith("file")


def test_doctor_names_each_problem_with_its_fix(daemon: DaemonProcess):
    daemon.start()
    os.chmod(daemon.state_dir, 0o755)
    qwen = Path(daemon.env["HOME"], ".qwen", "oauth_creds.json")
    qwen.parent.mkdir()
    qwen.write_text('{"access_token": "ab')
    status, found = checks(daemon)
    assert status == 1
    assert found["permissions"]["status"] == "fail"
    assert found["permissions"]["fix"] == f"run: chmod 700 {daemon.state_dir}"
    assert found["file qwen"]["status"] == "fail" and "qwen, then /auth" in found["file qwen"]["fix"]


def test_a_broken_config_fails_its_check_and_the_others_still_run(daemon: DaemonProcess):
    daemon.write_config('[store]\nbackend = "vault"\n')
    status, found = checks(daemon)
    assert status == 1
    assert found["config"]["status"] == "fail"
    assert f"{daemon.config_path}:2: store.backend" in found["config"]["detail"]
    assert "keyring" in found and "unit" in found


def test_doctor_reports_the_config_the_running_daemon_refused(daemon: DaemonProcess):
    daemon.start()
    daemon.write_config("[providers.beta\n")
    result = daemon.cli("token", "beta")
    assert result.returncode == 2 and "does not load" in result.stderr
    _, found = checks(daemon)
    assert found["daemon config"]["status"] == "fail"
    assert "the daemon runs its previous config" in found["daemon config"]["detail"]

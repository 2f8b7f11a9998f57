"""The container image without a Docker engine: its exact entry command and environment,
run here, must serve and pass its own HEALTHCHECK; and the Dockerfile keeps its promises.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from service.redis.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = str(Path(sys.executable).parent)


def final_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return lines[last_from:]


def instruction(name: str) -> list[str]:
    return [
        ln[len(name) + 1 :].strip() for ln in final_stage() if ln.upper().startswith(name + " ")
    ]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", args):
            env[key] = value.replace("$PATH", os.environ["PATH"])
    # /opt/venv/bin in the image is this test run's virtualenv here.
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", VENV_BIN)
    return env


def exec_form(args: str) -> list[str]:
    command = json.loads(args)
    assert isinstance(command, list), "exec form, so the server is PID 1 and gets SIGTERM"
    return [sys.executable if part == "python" else part for part in command]


def test_the_dockerfile_keeps_its_promises() -> None:
    first = (ROOT / "Dockerfile").read_text()
    assert first.count("FROM python:3.11-slim") == 2, "multi-stage on python:3.11-slim"
    user = instruction("USER")[-1]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")
    assert instruction("HEALTHCHECK")
    assert not any("pip install" in run for run in instruction("RUN")), "no installs in final"
    copies = instruction("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"], "only the built virtualenv"
    ignored = (ROOT / ".dockerignore").read_text()
    assert ignored.splitlines()[1] == "*", "nothing but the package goes into the build context"


def test_the_image_entry_command_serves_and_passes_its_healthcheck(
    redis_url: str, tmp_path: Path
) -> None:
    env = image_env()
    assert env["PORT"] == "8080" and env["HOST"] == "0.0.0.0"
    env["PORT"] = str(free_port())  # 8080 may be taken on this machine
    env["REDIS_URL"] = redis_url  # docker-compose.yml sets it the same way
    command = exec_form(instruction("CMD")[-1])
    healthcheck = exec_form(instruction("HEALTHCHECK")[-1].split("CMD", 1)[1].strip())
    # WORKDIR /app holds nothing: the package must run from its installed location.
    proc = subprocess.Popen(command, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(healthcheck, cwd=tmp_path, env=env, capture_output=True).returncode:
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{env['PORT']}/predict",
            data=b'{"input": "I love how well this works"}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert json.loads(resp.read())["result"]["label"] == "positive"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "SIGTERM ends the server cleanly"


def test_the_healthcheck_fails_when_nothing_serves(tmp_path: Path) -> None:
    env = {**image_env(), "PORT": str(free_port())}
    healthcheck = exec_form(instruction("HEALTHCHECK")[-1].split("CMD", 1)[1].strip())
    assert subprocess.run(healthcheck, cwd=tmp_path, env=env, capture_output=True).returncode == 1


@pytest.mark.parametrize("profile", [[], ["--profile", "split"]])
def test_the_compose_file_is_valid(profile: list[str]) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (scripts/check-deploy and CI run it)")
    out = subprocess.run(
        [compose, *profile, "config"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "redis-data" in out and "service_healthy" in out and "8080" in out

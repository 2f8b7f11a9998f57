"""The two commands a newcomer runs: scripts/run and the install step it shares with
scripts/test, as a person runs them from a shell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from service.redis.embedded import free_port

from .helpers import ROOT, service_env, wait_answering


def _offline_pip_env() -> dict[str, str]:
    """An environment in which pip can reach no package index at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        PIP_RETRIES="0",
        PIP_DEFAULT_TIMEOUT="2",
    )
    return env


@pytest.mark.timeout(180)
def test_a_failed_first_install_writes_no_marker_and_the_next_run_retries(
    tmp_path: Path,
) -> None:
    # A copy of what the install step reads, with a virtualenv of its own.
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "service", tmp_path / "service")
    env = _offline_pip_env()
    for attempt in (1, 2):
        run = subprocess.run(
            ["bash", "scripts/run", "--help"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert run.returncode != 0, f"attempt {attempt}: {run.stderr[-2000:]}"
        assert "installing the project" in run.stderr, f"attempt {attempt} did not try again"
        assert "installing into .venv failed (pip exited with" in run.stderr, run.stderr[-2000:]
        # pip's own error is shown, not swallowed.
        assert "ERROR:" in run.stderr or "error:" in run.stderr.split("installing into")[0]
        assert not list((tmp_path / ".venv").glob(".installed-*")), "no marker after a failure"
        assert "usage:" not in run.stdout, "the service must not be started"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("spec", ["mymodel:predict", "./mymodel.py:predict"])
def test_run_serves_a_model_from_the_folder_it_was_started_in(
    tmp_path: Path, redis_url: str, spec: str
) -> None:
    (tmp_path / "mymodel.py").write_text(
        "from helper import shout\n\ndef predict(text: str) -> str:\n    return shout(text)\n"
    )
    (tmp_path / "helper.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    port = free_port()
    env = service_env(port, MODEL=spec, REDIS_URL=redis_url)
    proc = subprocess.Popen([str(ROOT / "scripts" / "run")], cwd=tmp_path, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(base, proc, within=60)
        assert _post(base + "/predict", {"input": "hello"}) == (
            200,
            {"input": "hello", "result": "HELLO!"},
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_run_keeps_its_private_redis_data_in_the_folder_it_was_started_in(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = service_env(port, MODEL="tests.models:echo", LOG_LEVEL="INFO")
    env.pop("REDIS_URL", None)
    env.pop("DATA_DIR", None)
    env["PYTHONPATH"] = str(ROOT)  # the test model
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "run")], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_answering(base, proc, within=60)
        assert (tmp_path / "data" / "redis.log").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"(data in {tmp_path / 'data'})" in err, "the start-up log names the folder"

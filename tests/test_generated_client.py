"""The served OpenAPI spec builds a working client with the standard Python generator
(openapi-python-client): a sync call, an async submit and a poll through that client."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .helpers import ClientFactory, poll

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.mark.timeout(120)
async def test_openapi_python_client_generates_a_client_that_works(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    server = await make_client()
    spec = await (await server.get("/docs/swagger.json")).json()
    assert "callbacks" in spec["paths"]["/predict"]["post"], "the webhook stays documented"
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ['PATH']}"}
    command = [GENERATOR, "generate", "--path", "spec.json", "--output-path", "gen"]
    command += ["--meta", "none"]  # the package alone, no project files
    run = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr

    sys.path.insert(0, str(tmp_path))
    try:
        generated: Any = importlib.import_module("gen")
        post_predict = importlib.import_module("gen.api.predictions.post_predict")
        get_prediction = importlib.import_module("gen.api.predictions.get_predict_prediction_id")
        types = importlib.import_module("gen.models")
        client = generated.Client(base_url=str(server.make_url("")).rstrip("/"))
        async with client:
            body = types.DefaultPredictRequest(input_="I love this product, it works great!")
            sync = await post_predict.asyncio_detailed(client=client, body=body)
            assert sync.status_code == 200
            assert isinstance(sync.parsed, types.SyncPrediction)
            assert sync.parsed.input_ == "I love this product, it works great!"
            assert json.loads(sync.content)["result"]["label"] == "positive"
            urgent = types.DefaultPredictRequest(input_="now", priority=types.Priority.HIGH)
            assert urgent.to_dict()["priority"] == "high", "the client keeps the priority"

            queued = await post_predict.asyncio_detailed(
                client=client, body=body, async_mode=types.PostPredictAsyncMode.TRUE
            )
            assert queued.status_code == 202
            assert isinstance(queued.parsed, types.Accepted)
            prediction_id = queued.parsed.prediction_id

            async def done() -> Any:
                got = await get_prediction.asyncio(client=client, prediction_id=str(prediction_id))
                return got if got is not None and got.status.value == "done" else None

            record = await poll(done)
            assert isinstance(record, types.Prediction)
            assert record.output.input_ == "I love this product, it works great!"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "gen" or m.startswith("gen.")]:
            del sys.modules[name]

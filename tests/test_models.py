"""Bring your own model: Python, scikit-learn and ONNX, several at once, input validated."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from examples.train_iris import train
from service.http import state
from service.redis.embedded import free_port

from .helpers import KEYS, STREAM, ClientFactory, poll, wait_final

ROOT = Path(__file__).resolve().parent.parent
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="session")
def iris_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    joblib_path, onnx_path, accuracy = train(tmp_path_factory.mktemp("iris"))
    assert accuracy > 0.9
    return {"sklearn": str(joblib_path), "onnx": str(onnx_path)}


async def predict(
    client: TestClient, value: Any, path: str = "/predict", mode: str = "false"
) -> Any:
    resp = await client.post(path, json={"input": value}, headers={"Async-Mode": mode})
    body = await resp.json()
    if mode == "true":
        assert resp.status == 202, body
        record = await wait_final(client, body["prediction_id"])
        assert record["status"] == "done", record
        return record["output"]["result"]
    assert resp.status == 200, body
    return body["result"]


def label(result: dict[str, Any]) -> Any:
    return result["label"][0] if isinstance(result["label"], list) else result["label"]


@pytest.mark.parametrize("kind", ["sklearn", "onnx"])
@pytest.mark.parametrize("mode", ["false", "true"])
async def test_iris_predicts_a_row_and_a_list_of_rows(
    make_client: ClientFactory, iris_files: dict[str, str], kind: str, mode: str
) -> None:
    client = await make_client(model=iris_files[kind])
    one = await predict(client, SETOSA, mode=mode)
    assert label(one) == "setosa"
    probabilities = one["probabilities"]
    total = sum(probabilities.values()) if isinstance(probabilities, dict) else sum(probabilities)
    assert total == pytest.approx(1.0, abs=1e-5)
    many = await predict(client, [SETOSA, VIRGINICA], mode=mode)
    assert [label(r) for r in many] == ["setosa", "virginica"]


BAD_ROWS = [
    [1.0, 2.0, 3.0],
    ["5.1", 3.5, 1.4, 0.2],
    [True, 1, 1, 1],
    [],
    "text",
    {"a": 1},
    [[1, 2, 3, 4], [1]],
]


@pytest.mark.parametrize("kind", ["sklearn", "onnx"])
@pytest.mark.parametrize("bad", BAD_ROWS, ids=[repr(b) for b in BAD_ROWS])
@pytest.mark.parametrize("mode", ["false", "true"])
async def test_iris_refuses_bad_rows_with_422_and_never_queues_them(
    make_client: ClientFactory,
    rds: Redis,
    iris_files: dict[str, str],
    kind: str,
    bad: Any,
    mode: str,
) -> None:
    client = await make_client(model=iris_files[kind], workers=0)
    resp = await client.post("/predict", json={"input": bad}, headers={"Async-Mode": mode})
    assert resp.status == 422
    body = await resp.json()
    assert body["detail"] and all(d["loc"][0] == "input" for d in body["detail"])
    # Locations name the input's own parts, never the validator's internal branch names.
    assert not [d for d in body["detail"] if {"one", "many"} & set(map(str, d["loc"]))], body
    assert await rds.xlen(STREAM) == 0


async def test_a_bad_cell_of_a_row_is_located_by_its_index(
    make_client: ClientFactory, iris_files: dict[str, str]
) -> None:
    client = await make_client(model=iris_files["sklearn"], workers=0)
    resp = await client.post("/predict", json={"input": [5.1, 3.5, "x", 0.2]})
    assert [d["loc"] for d in (await resp.json())["detail"]] == [["input", 2]]
    resp = await client.post("/predict", json={"input": [[5.1, 3.5, 1.4, 0.2], [1.0]]})
    assert [d["loc"] for d in (await resp.json())["detail"]] == [["input", 1]]


@pytest.mark.parametrize("mode", ["false", "true"])
async def test_python_model_with_a_declared_input_type(
    make_client: ClientFactory, mode: str
) -> None:
    client = await make_client(model="examples.review_model:ReviewCheck")
    result = await predict(client, {"text": "Awful, it broke on day one.", "stars": 5}, mode=mode)
    assert result == {"sentiment": "negative", "compound": result["compound"], "consistent": False}
    bad = await client.post(
        "/predict", json={"input": {"text": "fine", "stars": 7}}, headers={"Async-Mode": mode}
    )
    assert bad.status == 422
    assert [d["loc"] for d in (await bad.json())["detail"]] == [["input", "stars"]]


@pytest.mark.parametrize("mode", ["false", "true"])
async def test_a_function_models_annotations_are_its_schemas(
    make_client: ClientFactory, mode: str
) -> None:
    client = await make_client(model="tests.models:typed")
    assert await predict(client, "four", mode=mode) == {"length": 4}
    bad = await client.post("/predict", json={"input": 42}, headers={"Async-Mode": mode})
    assert bad.status == 422, await bad.text()
    assert [d["loc"] for d in (await bad.json())["detail"]] == [["input"]]
    described = await (await client.get("/models/default")).json()
    assert described["input_schema"] == {"type": "string"}
    assert described["output_schema"]["additionalProperties"] == {"type": "integer"}


async def test_three_models_in_one_process(
    make_client: ClientFactory, iris_files: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        f"""
default_model = "sentiment"
[models.sentiment]
spec = "service.models.sentiment:VaderSentiment"
[models.iris]
spec = "{iris_files["sklearn"]}"
[models.review]
spec = "examples.review_model:ReviewCheck"
"""
    )
    client = await make_client(models_file=config, models=f"iris-onnx={iris_files['onnx']}")
    assert await (await client.get("/models")).json() == {
        "models": ["iris", "iris-onnx", "review", "sentiment"],
        "default": "sentiment",
    }
    info = await (await client.get("/models/iris")).json()
    assert info["kind"] == "sklearn" and info["default"] is False
    assert "LogisticRegression" in info["version"] or "Pipeline" in info["version"]
    assert info["input_schema"]["oneOf"][0]["minItems"] == 4
    assert info["batch"]["max_batch_size"] >= 1
    assert (await (await client.get("/models/iris-onnx")).json())["kind"] == "onnx"

    assert (await predict(client, "What a great day"))["label"] == "positive"
    for mode in ("false", "true"):
        assert label(await predict(client, SETOSA, "/models/iris/predict", mode)) == "setosa"
        assert (
            label(await predict(client, VIRGINICA, "/models/iris-onnx/predict", mode))
            == "virginica"
        )
        review = await predict(
            client, {"text": "Love it", "stars": 5}, "/models/review/predict", mode
        )
        assert review["consistent"] is True

    resp = await client.post("/models/nope/predict", json={"input": "x"})
    assert resp.status == 404
    assert (await resp.json())["error"] == "Unknown model 'nope'."
    assert (await client.get("/models/nope")).status == 404


async def test_queued_jobs_are_routed_to_their_own_model(
    make_client: ClientFactory, iris_files: dict[str, str]
) -> None:
    client = await make_client(
        models=f"iris={iris_files['sklearn']},echo=tests.models:echo",
        model="service.models.sentiment:VaderSentiment",
    )
    ids = {}
    for path, value in [
        ("/predict", "so good"),
        ("/models/iris/predict", SETOSA),
        ("/models/echo/predict", 7),
    ]:
        resp = await client.post(path, json={"input": value}, headers={"Async-Mode": "true"})
        ids[path] = (await resp.json())["prediction_id"]
    records = {path: await wait_final(client, pid) for path, pid in ids.items()}
    assert records["/predict"]["model"] == "default"
    assert records["/predict"]["output"]["result"]["label"] == "positive"
    assert records["/models/iris/predict"]["model"] == "iris"
    assert label(records["/models/iris/predict"]["output"]["result"]) == "setosa"
    assert records["/models/echo/predict"]["output"]["result"] == {"echo": 7}


async def test_spec_shows_each_models_input_schema(
    make_client: ClientFactory, iris_files: dict[str, str]
) -> None:
    client = await make_client(
        model="service.models.sentiment:VaderSentiment", models=f"iris={iris_files['onnx']}"
    )
    spec = await (await client.get("/docs/swagger.json")).json()
    body = spec["paths"]["/models/iris/predict"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    schema = spec["components"]["schemas"][ref]["properties"]["input"]
    assert schema["oneOf"][0]["minItems"] == 4
    assert schema["oneOf"][0]["items"]["type"] == "number"
    assert ref == "IrisPredictRequest", "schema names are PascalCase"
    assert set(spec["components"]["schemas"][ref]["properties"]) == {
        "input",
        "webhook",
        "webhook_events",
        "priority",
    }
    default_body = spec["paths"]["/predict"]["post"]["requestBody"]
    ref = default_body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert spec["components"]["schemas"][ref]["properties"]["input"]["type"] == "string"
    assert "priority" in spec["components"]["schemas"][ref]["properties"]
    # Each model's bulk route, with its own items.
    bulk = spec["paths"]["/models/iris/predict/batch"]["post"]["requestBody"]
    ref = bulk["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    items = spec["components"]["schemas"][ref]["properties"]["inputs"]["items"]
    assert items["oneOf"][0]["minItems"] == 4
    names = [n for n in spec["components"]["schemas"] if not n[0].isupper()]
    assert names == [], "every schema name is PascalCase"
    resp = await client.post("/models/iris/predict/batch", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert resp.status == 202, await resp.text()
    assert (await client.post("/models/nope/predict/batch", json={"inputs": [1]})).status == 404


@pytest.mark.parametrize("mode", ["false", "true"])
async def test_process_execution_runs_the_model_in_a_pool_process(
    make_client: ClientFactory, mode: str
) -> None:
    client = await make_client(
        model="tests.models:WithHooks", execution="process", process_workers=1
    )
    result = await predict(client, 1, mode=mode)
    assert result["value"] == 1001  # setup() ran, in the process that predicts
    assert result["pid"] == result["setup_pid"] != os.getpid()


@pytest.mark.timeout(90)
async def test_a_killed_model_process_is_replaced_and_its_jobs_run_again(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    client = await make_client(
        model="tests.models:journaled", execution="process", process_workers=1, workers=1
    )
    pool_pids = client.server.app[state.EXECUTOR].processes.pids
    job = {"tag": "killed", "seconds": 3}
    resp = await client.post("/predict", json={"input": job}, headers={"Async-Mode": "true"})
    prediction_id = (await resp.json())["prediction_id"]

    async def running() -> bool:
        return journal.exists() and "start killed" in journal.read_text()

    await poll(running)
    (pid,) = pool_pids()
    os.kill(pid, signal.SIGKILL)  # mid-call, as the OOM killer would

    async def not_ready() -> dict[str, Any] | None:
        ready = await client.get("/health/ready")
        return await ready.json() if ready.status == 503 else None

    assert "restarted" in (await poll(not_ready))["checks"]["models"]
    # A request meanwhile waits for the new process (not a 503 the client must retry).
    resp = await client.post("/predict", json={"input": {"tag": "now", "seconds": 0}})
    assert resp.status == 200, await resp.text()
    assert (await client.get("/health/ready")).status == 200
    assert pool_pids() and pid not in pool_pids()
    record = await wait_final(client, prediction_id, within=30)
    assert record["status"] == "done"
    assert record["attempts"] == 2, "the call the dead process had counts one delivery"


@pytest.mark.timeout(90)
async def test_a_poison_input_fails_alone_and_the_jobs_of_its_batch_finish(
    make_client: ClientFactory, rds: Redis
) -> None:
    api = await make_client(model="tests.models:poison", execution="process", workers=0)
    inputs = ["a", "b", "poison", "c", "d"]
    resp = await api.post("/predict/batch", json={"inputs": inputs})
    ids = (await resp.json())["prediction_ids"]
    worker = await make_client(
        model="tests.models:poison",
        execution="process",
        process_workers=1,
        max_deliveries=2,
        consumer_name="worker",
    )
    records = [await wait_final(worker, p, within=60) for p in ids]
    assert [r["status"] for r in records] == ["done", "done", "failed", "done", "done"]
    assert [r["output"]["result"] for r in records if r["status"] == "done"] == [
        {"echo": x} for x in "abcd"
    ]
    assert records[2]["error"] == "gave up after 2 deliveries"
    assert await rds.xlen(KEYS.dead_letters) == 1, "only the poison job is a dead letter"


@pytest.mark.timeout(90)
async def test_sync_requests_beside_a_poison_one_get_their_answers(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        model="tests.models:poison", execution="process", process_workers=1, workers=0
    )
    inputs = ["a", "b", "poison", "c"]
    answers = await asyncio.gather(*(client.post("/predict", json={"input": x}) for x in inputs))
    assert [a.status for a in answers] == [200, 200, 500, 200]
    assert [(await a.json()).get("result") for a in answers] == [
        {"echo": "a"},
        {"echo": "b"},
        None,
        {"echo": "c"},
    ]
    assert "died on this input" in (await answers[2].json())["error"]


@pytest.mark.timeout(90)
async def test_a_model_process_killed_while_idle_is_never_handed_a_call(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        model="tests.models:whoami", execution="process", process_workers=1, workers=1
    )
    pool_pids = client.server.app[state.EXECUTOR].processes.pids
    (pid,) = pool_pids()
    os.kill(pid, signal.SIGKILL)  # idle: no call is running

    async def gone() -> bool:
        return pid not in pool_pids()

    await poll(gone)
    resp = await client.post("/predict", json={"input": "sync"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["result"]["pid"] != pid
    os.kill(next(iter(pool_pids())), signal.SIGKILL)
    resp = await client.post("/predict", json={"input": "queued"}, headers={"Async-Mode": "true"})
    record = await wait_final(client, (await resp.json())["prediction_id"], within=60)
    assert record["status"] == "done"
    assert record["attempts"] == 1, "no delivery is spent on a process dead before the call"


def _start(env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    port = str(free_port())
    full = {**os.environ, "PORT": port, "REDIS_URL": "redis://127.0.0.1:1/0", **env}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "service"]
    return subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_a_model_that_fails_to_load_stops_startup_with_one_clear_line(tmp_path: Path) -> None:
    out = _start({"MODEL": str(tmp_path / "missing.joblib")})
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot start: model 'default'")
    assert "missing.joblib" in last and "No such file" in last
    assert "Traceback" not in out.stderr


def test_a_missing_extra_says_which_to_install(iris_files: dict[str, str]) -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None; from service.__main__ import main; main()"
    )
    out = _start({"MODEL": iris_files["onnx"]}, code)
    assert out.returncode == 2
    assert "pip install '.[onnx]'" in out.stderr.strip().splitlines()[-1]


def test_a_port_in_use_stops_the_start_with_one_line(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env={
                **os.environ,
                "PORT": str(port),
                "HOST": "127.0.0.1",
                "REDIS_URL": redis_url,
                "MODEL": "tests.models:echo",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another process has the port? choose another with PORT or --port)"
    )
    assert "Traceback" not in run.stderr
    assert "started 2 workers" in run.stderr

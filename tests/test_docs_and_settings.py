"""The Swagger page and its spec; settings from env and CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from service.http.docs import resolved
from service.job import Status
from service.settings import Settings, load_settings

from .helpers import ROOT, ClientFactory


async def test_docs_page_loads_with_local_assets_only(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/docs/")
    assert resp.status == 200
    html = await resp.text()
    assert "swagger-ui" in html
    assert '"validatorUrl": null' in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(not a.startswith(("http:", "https:", "//")) for a in assets)
    for asset in assets:
        assert (await client.get("/docs/" + asset.removeprefix("./"))).status == 200


async def test_spec_documents_every_route_header_and_error(make_client: ClientFactory) -> None:
    client = await make_client()
    spec = await (await client.get("/docs/swagger.json")).json()
    post = spec["paths"]["/predict"]["post"]
    assert post["parameters"][0]["$ref"] == "#/components/parameters/AsyncMode"
    assert spec["components"]["parameters"]["AsyncMode"]["name"] == "Async-Mode"
    # Every status of the README's table of answers is documented on both predict routes.
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| case | status |") :].split("\n\n", 1)[0]
    statuses = set(re.findall(r"\| ([1-5]\d\d)\b", table))
    assert {"400", "401", "404", "409", "413", "415", "422", "429", "500", "503", "504"} <= statuses
    # (405 is the answer for any other method: a shared response, not this operation's.)
    assert "MethodNotAllowed" in spec["components"]["responses"]
    for path in ("/predict", "/models/{name}/predict"):
        documented = set(spec["paths"][path]["post"]["responses"])
        wanted = statuses - {"405"} | {"200", "202"}
        assert wanted <= documented, (path, wanted - documented)
    accepted = resolved(spec, post["responses"]["202"])
    assert "Location" in accepted["headers"]
    get = spec["paths"]["/predict/{prediction_id}"]["get"]
    assert {"200", "404"} <= set(get["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["additionalProperties"] is False
    assert set(schemas["Prediction"]["properties"]["status"]["enum"]) == {s.value for s in Status}
    for path in ("/predict", "/models/{name}/predict", "/predict/batch"):
        names = [p["$ref"] for p in spec["paths"][path]["post"]["parameters"]]
        assert "#/components/parameters/CancelAfter" in names, path


def test_settings_come_from_env_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    settings = load_settings(["--workers", "0", "--model", "tests.models:echo"])
    assert settings.port == 9000
    assert settings.workers == 0
    assert settings.model == "tests.models:echo"
    assert settings.redis_url == "redis://example:6379/2"


def test_defaults_work_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.port == 8080
    assert settings.redis_url is None
    assert settings.result_ttl_seconds == 3600
    assert settings.model == "service.models.sentiment:VaderSentiment"


def test_help_lists_every_setting_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, check=True
    ).stdout
    out = " ".join(out.split())  # argparse wraps lines at the terminal width
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out
        assert f"env {name.upper()}" in out
    assert "default: 8080" in out


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        load_settings(["--workers", "-1"])


def test_every_setting_is_in_the_readme_the_env_example_and_compose() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    passed = compose["x-settings"]
    for name in Settings.model_fields:
        env = name.upper()
        assert f"| `{env}` |" in readme, f"{env} is missing from the README's settings table"
        assert f"# {env}=" in example, f"{env} is missing from .env.example"
        # compose passes a setting from .env to every replica, unless .env.example says
        # that compose sets it itself (and then it does).
        set_by_compose = f"#   (compose sets this itself)\n# {env}=" in example
        if set_by_compose:
            assert env not in passed or not passed[env].startswith("${"), env
        else:
            assert passed.get(env) == f"${{{env}:-}}", f"compose does not pass {env} on"
    for service in ("api", "worker"):  # both take every setting (the YAML merge key)
        environment = compose["services"][service]["environment"]
        assert {k: environment.get(k) for k in passed} == passed, service

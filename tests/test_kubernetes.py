"""The Kubernetes manifests (deploy/kubernetes), rendered by `kubectl kustomize` as a user
would apply them, checked without a cluster: core objects against the Kubernetes schemas,
and the invariants that keep the service correct on Kubernetes against the service itself
(its routes, settings, image, ports, and the metrics a running replica exports)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.settings import Settings

from .helpers import ClientFactory, figure, scrape

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["single", "split", "scale-to-zero", "gpu"]
#: Components an overlay may add (the ServiceMonitor is in every one already).
OPTIONAL_COMPONENTS = ["networkpolicy", "tenants", "files"]
#: The standard variables the S3 client reads (BLOB_URL=s3://...): not settings of ours.
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
#: The Kubernetes version the core objects are validated against (kubernetes-validate).
KUBERNETES_VERSION = "1.32.0"
#: Kinds no Kubernetes schema covers (KEDA's and prometheus-operator's); checked below.
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor"}
#: Seconds the grace period must leave beyond the preStop pause and the drain.
MARGIN = 5

Manifest = dict[str, Any]


def listed_components(overlay: str) -> set[str]:
    kustomization = yaml.safe_load(
        (KUBERNETES / "overlays" / overlay / "kustomization.yaml").read_text()
    )
    return {Path(c).name for c in kustomization.get("components", [])}


def with_components(overlay: str) -> str:
    """The name of `overlay` rendered with the optional components it does not list."""
    return "+".join(
        [overlay, *(c for c in OPTIONAL_COMPONENTS if c not in listed_components(overlay))]
    )


#: Every overlay, alone and with the optional components, as a user's overlay adds them.
VARIANTS = OVERLAYS + [with_components(o) for o in OVERLAYS]


@cache
def render(variant: str) -> list[Manifest]:
    """`kubectl kustomize` of an overlay, or of 'overlay+component+...': the overlay with
    those components added by a kustomization of its own, as a user would."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("REQUIRE_KUBECTL"):
            pytest.fail("kubectl is needed to render the manifests (REQUIRE_KUBECTL is set)")
        pytest.skip("kubectl not installed")
    overlay, *components = variant.split("+")
    with tempfile.TemporaryDirectory() as wrapper:
        target = str(KUBERNETES / "overlays" / overlay)
        if components:
            # Kustomize takes no absolute path: name them relative to the wrapper.
            here = os.path.relpath(KUBERNETES, wrapper)
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "model-service",
                "resources": [f"{here}/overlays/{overlay}"],
                "components": [f"{here}/components/{c}" for c in components],
            }
            Path(wrapper, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            target = wrapper
        out = subprocess.run(
            [kubectl, "kustomize", target],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert out.returncode == 0, f"kubectl kustomize {variant}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} {name}"
    return found[0]


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def environment(objects: list[Manifest], deployment: Manifest) -> dict[str, str]:
    """What the container's environment holds: its ConfigMaps, then its own values (secret
    references as '<secret>')."""
    values: dict[str, str] = {}
    spec = container(deployment)
    for source in spec.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        values.update(named(objects, "ConfigMap", ref)["data"])
    for item in spec.get("env", []):
        values[item["name"]] = item.get("value", "<secret>")
    return values


def setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: Manifest) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


@pytest.fixture(params=VARIANTS)
def objects(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


def test_core_objects_are_valid_for_the_stated_kubernetes_version(
    objects: list[Manifest],
) -> None:
    import kubernetes_validate

    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"} <= kinds
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")


def test_probes_ask_the_routes_the_service_serves(objects: list[Manifest]) -> None:
    app = create_app(Settings(redis_url="redis://unused:6379/0"))
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    for deployment in of_kind(objects, "Deployment"):
        spec = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        probes = {
            k: spec[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probes["readinessProbe"]["path"] == "/health/ready"
        assert probes["livenessProbe"]["path"] == "/health/live"
        for probe in probes.values():
            assert probe["path"] in paths, f"{probe['path']} is not a route of the service"
            assert probe["port"] in ports, f"probe port {probe['port']} is not a container port"
        startup = spec["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "slow model loads"


def test_the_grace_period_outlasts_the_pause_and_the_drain(objects: list[Manifest]) -> None:
    for deployment in of_kind(objects, "Deployment"):
        env = environment(objects, deployment)
        drain = float(
            env.get(
                "SHUTDOWN_GRACE_SECONDS", Settings.model_fields["shutdown_grace_seconds"].default
            )
        )
        pause = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert pause[0] == "sleep"
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= int(pause[1]) + drain + MARGIN, (
            f"{deployment['metadata']['name']}: terminationGracePeriodSeconds {grace} must "
            f"exceed the preStop pause ({pause[1]} s) + SHUTDOWN_GRACE_SECONDS ({drain:g} s) "
            f"+ {MARGIN} s, or the kubelet kills a drain that keeps to its grace"
        )


def test_every_environment_name_is_a_setting_with_a_valid_value(objects: list[Manifest]) -> None:
    known = setting_names()
    for deployment in of_kind(objects, "Deployment"):
        env = environment(objects, deployment)
        unknown = set(env) - known
        if env.get("BLOB_URL", "").startswith("s3://"):
            unknown -= AWS_VARIABLES  # how the S3 store is reached
        assert not unknown, f"{deployment['metadata']['name']}: not settings: {sorted(unknown)}"
        values = {k.lower(): v for k, v in env.items() if v != "<secret>" and k in known}
        Settings(**{"redis_url": "redis://unused:6379/0", **values})  # raises on a bad value
        secrets = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container(deployment)["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert {"REDIS_URL", "API_KEY", "WEBHOOK_SECRET", "ADMIN_API_KEY"} <= set(secrets)
        for name, ref in secrets.items():
            assert ref["name"] == "model-service-secrets" and ref["key"] == name
            # A Secret with REDIS_URL alone must start the pods.
            assert ref.get("optional", False) is (name != "REDIS_URL"), name


def test_pods_are_locked_down_with_requests_limits_and_one_writable_folder(
    objects: list[Manifest],
) -> None:
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        spec = container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        security = spec["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][kind]), kind
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp is an emptyDir"
        for mount in spec["volumeMounts"]:
            if "emptyDir" not in volumes[mount["name"]]:
                assert mount.get("readOnly") is True, f"{mount['mountPath']} is read-only"
        data_dir = environment(objects, deployment).get("DATA_DIR", "data")
        assert any(data_dir.startswith(path + "/") for path in mounts), "DATA_DIR is writable"


def test_each_deployment_has_its_own_budget_spread_and_no_fixed_replica_count(
    objects: list[Manifest],
) -> None:
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in deployments:
        labels = pod_labels(deployment)
        mine = [b for b in budgets if matches(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{deployment['metadata']['name']}: one PodDisruptionBudget"
        for other in deployments:
            if other is not deployment:
                assert not matches(mine[0]["spec"]["selector"]["matchLabels"], pod_labels(other))
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"] == {
                k: v for k, v in labels.items() if k in constraint["labelSelector"]["matchLabels"]
            }
            assert matches(constraint["labelSelector"]["matchLabels"], labels)
            for other in deployments:
                if other is not deployment:
                    assert not matches(
                        constraint["labelSelector"]["matchLabels"], pod_labels(other)
                    )
        # An autoscaler owns the count: a fixed one would be reset by every apply.
        assert "replicas" not in deployment["spec"]
        scalers = of_kind(objects, "ScaledObject") + of_kind(objects, "HorizontalPodAutoscaler")
        targets = [s["spec"]["scaleTargetRef"]["name"] for s in scalers]
        assert targets.count(deployment["metadata"]["name"]) == 1, "one autoscaler each"


def test_image_and_ports_agree_with_the_dockerfile_and_compose(objects: list[Manifest]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for p in re.findall(r"^EXPOSE (\d+)", dockerfile, re.MULTILINE)}
    port_env = re.search(r"PORT=(\d+)", dockerfile)
    assert port_env is not None
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["api"]["image"].split(":")[0]
    deployments = of_kind(objects, "Deployment")
    if any("nvidia.com/gpu" in container(d)["resources"]["limits"] for d in deployments):
        # The default image has no CUDA: a render asking for a GPU runs the GPU build, in
        # every Deployment of it (one build of the model for API and workers).
        image += "-gpu"
    for deployment in deployments:
        spec = container(deployment)
        assert spec["image"].split(":")[0] == image, deployment["metadata"]["name"]
        ports = {p["containerPort"] for p in spec["ports"]}
        assert ports == exposed == {int(port_env.group(1))}
        assert environment(objects, deployment).get("PORT", port_env.group(1)) == port_env.group(1)
    for service in of_kind(objects, "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] == "http", "the Service reaches the named container port"


def test_the_split_overlays_keep_api_and_workers_apart() -> None:
    for overlay in ("split", "scale-to-zero", "gpu"):
        objects = render(overlay)
        api = named(objects, "Deployment", "model-service-api")
        worker = named(objects, "Deployment", "model-service-worker")
        assert environment(objects, api)["WORKERS"] == "0"
        assert int(environment(objects, worker).get("WORKERS", "2")) >= 1
        service = named(objects, "Service", "model-service-api")
        assert matches(service["spec"]["selector"], pod_labels(api))
        assert not matches(service["spec"]["selector"], pod_labels(worker)), "no traffic to workers"
        hpa = named(objects, "HorizontalPodAutoscaler", "model-service-api")
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        scaled = named(objects, "ScaledObject", "model-service-worker")
        expected = 0 if overlay == "scale-to-zero" else 1
        assert scaled["spec"]["minReplicaCount"] == expected
    gpu = named(render("gpu"), "Deployment", "model-service-worker")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert of_kind(render("gpu"), "NetworkPolicy"), "the example shows the optional policy"


def test_the_servicemonitor_carries_the_label_prometheus_selects(objects: list[Manifest]) -> None:
    # kube-prometheus-stack's Prometheus ignores a ServiceMonitor without it, and the
    # scalers then read no backlog.
    monitors = of_kind(objects, "ServiceMonitor")
    assert monitors, "every overlay is scraped"
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_tenants_come_from_a_secret_folder_that_follows_its_changes() -> None:
    for overlay in OVERLAYS:
        for deployment in of_kind(render(overlay), "Deployment"):
            # Without the component no keys file is named: the service refuses one it
            # cannot read, and the Secret may not exist.
            assert "API_KEYS_FILE" not in environment(render(overlay), deployment)
        objects = render(f"{overlay}+tenants")
        deployments = of_kind(objects, "Deployment")
        assert deployments
        for deployment in deployments:
            keys_file = Path(environment(objects, deployment)["API_KEYS_FILE"])
            spec = container(deployment)
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            mounts = [m for m in spec["volumeMounts"] if keys_file.parent == Path(m["mountPath"])]
            assert len(mounts) == 1, f"{keys_file}: its folder is mounted"
            mount = mounts[0]
            # The kubelet updates a mounted folder when the Secret changes; a subPath
            # mount keeps the first version for the pod's life.
            assert "subPath" not in mount and "subPathExpr" not in mount
            assert mount.get("readOnly") is True
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "model-service-tenants"
            # Required: a missing Secret holds the pod with an event, not a crash loop.
            assert not secret.get("optional", False)
            items = [i["path"] for i in secret.get("items", [])]
            assert not items or keys_file.name in items, "the Secret holds the file"


async def test_the_scalers_query_what_a_running_replica_exports(
    make_client: ClientFactory,
) -> None:
    # A replica (API-only, as the API pods that report the backlog while the workers stand
    # at zero) is started and scraped: every metric a ScaledObject queries must be there.
    api = await make_client(workers=0)
    text = await scrape(api)
    for overlay in OVERLAYS:
        objects = render(overlay)
        namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
        assert len(namespaces) == 1
        deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
        for scaled in of_kind(objects, "ScaledObject"):
            assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
            triggers = [t for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]
            assert triggers, "scales on the queue"
            for trigger in triggers:
                query = trigger["metadata"]["query"]
                found = re.fullmatch(r'max\((\w+)\{namespace="([\w-]+)"\}\)', query)
                assert found, f"{overlay}: {query!r} must take one replica's figure (max)"
                metric, namespace = found.groups()
                assert {namespace} == namespaces, f"{overlay}: the query names its namespace"
                figure(text, metric)  # fails when a running replica does not export it
                assert trigger["metadata"]["activationThreshold"] == "0", "one job wakes it"
                assert trigger["metricType"] == "AverageValue"
        for monitor in of_kind(objects, "ServiceMonitor"):
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = [
                s for s in of_kind(objects, "Service") if matches(selector, s["metadata"]["labels"])
            ]
            assert len(services) == len(deployments), "every pod is scraped"
            assert monitor["spec"]["endpoints"][0]["path"] in ("/metrics",)

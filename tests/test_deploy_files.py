"""The container and cluster files in docker/, checked as far as a machine without a Docker engine
or a cluster allows: hadolint, `docker-compose config`, kubernetes-validate, and the references
between them (every variable, volume, secret, service and queue they name exists)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.cluster import RedisServer, Worker, wait_for
from zoomq.config import VARIABLES
from zoomq.node import sizing
from zoomq.queue.celery_app import render_queue

DOCKER = Path(__file__).resolve().parents[1] / "docker"
K8S = DOCKER / "k8s"
GiB = 2**30
ZOOMQ_VARIABLES = {v.name for v in VARIABLES}
FULL_SIZE_IR = 2.4 * GiB  # fp16 IR of a full-size SD2 model (text encoder, UNet, autoencoder)


def tool(name: str) -> str:
    """A checker from the test extra (hadolint, kubernetes-validate) or the system (docker-compose)."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed (make test installs it)")
    return path


# -- the image ----------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_image_is_built_in_stages_runs_unprivileged_and_execs_its_command():
    text = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2 and "COPY --from=build" in text
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in text  # CPU-only torch, the version on disk here
    assert re.search(r"^USER 10001:10001$", text, re.M)
    cmd_line = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd_line is not None, text
    cmd = cmd_line.group(1)
    assert cmd.startswith("[")  # exec form: no shell between the signal and the process
    health_file = re.search(r"ZOOMQ_HEALTH_FILE=(\S+)", text)
    assert health_file is not None, text
    assert health_file.group(1) == "/tmp/zoomq-alive"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:4] == ["!pyproject.toml", "!constraints.txt", "!README.md", "!src/"]


# -- compose ----------------------------------------------------------------------------------

def compose(*args: str, password: str | None = "s3cret") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOMQ_")}
    if password is not None:
        env["ZOOMQ_REDIS_PASSWORD"] = password
    return subprocess.run([tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), *args],
                          capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def services() -> dict:
    done = compose("--profile", "prepare", "--profile", "flower", "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_compose_file_is_valid_and_needs_a_password():
    assert compose("config", "-q").returncode == 0
    refused = compose("config", "-q", password=None)
    assert refused.returncode != 0 and "set ZOOMQ_REDIS_PASSWORD in docker/.env" in refused.stderr


def test_compose_roles(services):
    s = services["services"]
    assert set(s) == {"redis", "web", "worker", "encoder", "prepare", "flower"}
    assert not any("container_name" in service for service in s.values())  # --scale worker=N works
    redis = s["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes" and redis[redis.index("--requirepass") + 1] == "s3cret"
    assert ("redis-data", "/data", "rw") in mounts(s["redis"])
    assert "/api/health" in " ".join(s["web"]["healthcheck"]["test"])
    assert s["worker"]["command"][:4] == ["zoomq", "worker", "--queues", "render"]
    assert s["encoder"]["command"][:4] == ["zoomq", "worker", "--queues", "encode"]
    assert ("models", "/models", "ro") in mounts(s["worker"])
    # A stop lets the longest piece finish: a full-size 512 px keyframe takes about a minute on 2 cores.
    assert seconds(s["worker"]["stop_grace_period"]) >= 300
    for name in ("web", "worker", "encoder"):
        assert s[name]["init"] is True and s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s[name]["environment"]["ZOOMQ_REDIS_URL"] == "redis://:s3cret@redis:6379/0"
    assert s["prepare"]["profiles"] == ["prepare"] and s["prepare"]["entrypoint"] == ["zoomq", "prepare"]
    assert s["flower"]["profiles"] == ["flower"]


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume, from docker-compose's ``source:target:mode``."""
    return [tuple((v.split(":") + ["rw"])[:3]) for v in service.get("volumes", [])]


def seconds(duration: str) -> int:
    """docker-compose's normalised durations: ``10m``, ``2m30s``, ``45s``."""
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([hms])", duration))


def test_compose_names_only_what_exists(services):
    s = services["services"]
    for name, service in s.items():
        for variable in service.get("environment", {}):
            assert not variable.startswith("ZOOMQ_") or variable in ZOOMQ_VARIABLES, (name, variable)
        for source, _target, _ in mounts(service):
            assert source.startswith("/") or source in services["volumes"], (name, source)
        for needed in service.get("depends_on", {}):
            assert needed in s, (name, needed)
    worker_health = " ".join(s["worker"]["healthcheck"]["test"])
    assert "/tmp/zoomq-alive" in worker_health  # the file the image's ZOOMQ_HEALTH_FILE names


# -- Kubernetes -------------------------------------------------------------------------------

def manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def pod_specs() -> dict[str, dict]:
    specs = {name: d["spec"]["template"]["spec"] for kind in ("Deployment", "StatefulSet", "Job")
             for name, d in of_kind(kind).items()}
    assert specs
    return specs


def test_kubernetes_manifests_validate():
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    done = subprocess.run([tool("kubernetes-validate"), "--strict", *files], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # kubernetes-validate has no schema for KEDA's kinds; everything else must have passed.
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", done.stdout + done.stderr))
    assert unchecked == {"ScaledObject", "TriggerAuthentication"}
    kustomized = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert set(kustomized) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prepare-job.yaml"}


def test_kubernetes_names_only_what_exists():
    secrets, configmaps, claims = of_kind("Secret"), of_kind("ConfigMap"), of_kind("PersistentVolumeClaim")
    for name, spec in pod_specs().items():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                ref = source.get("secretRef") or source.get("configMapRef")
                assert ref["name"] in (secrets if "secretRef" in source else configmaps), (name, ref)
            for variable in container.get("env", []):
                assert not variable["name"].startswith("ZOOMQ_") or variable["name"] in ZOOMQ_VARIABLES
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], (name, ref)
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            templates = {t["metadata"]["name"] for t in of_kind("StatefulSet").get(name, {}).get("spec", {}).get(
                "volumeClaimTemplates", [])}
            assert mounted <= set(volumes) | templates, (name, mounted)
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for config in configmaps.values():
        assert all(not k.startswith("ZOOMQ_") or k in ZOOMQ_VARIABLES for k in config["data"])
    labels = [d["spec"]["template"]["metadata"]["labels"] for kind in ("Deployment", "StatefulSet")
              for d in of_kind(kind).values()]
    for name, service in of_kind("Service").items():
        assert any(service["spec"]["selector"].items() <= pod.items() for pod in labels), name


def test_keda_scales_the_render_workers_on_their_queues():
    render = of_kind("Deployment")["zoomq-render"]
    scaled = of_kind("ScaledObject")["zoomq-render"]
    auth = of_kind("TriggerAuthentication")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "zoomq-render"
    command = render["spec"]["template"]["spec"]["containers"][0]["command"]
    models = command[command.index("--models") + 1:]
    triggers = scaled["spec"]["triggers"]
    assert {t["metadata"]["listName"] for t in triggers} == {render_queue(Path(m).name) for m in models}
    for trigger in triggers:
        assert trigger["type"] == "redis"
        host = trigger["metadata"]["address"].split(".")[0]
        assert host in of_kind("Service") and trigger["metadata"]["address"].endswith(":6379")
        ref = auth[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"][0]
        assert ref["key"] in of_kind("Secret")[ref["name"]]["stringData"]
    assert scaled["spec"]["cooldownPeriod"] >= 300  # no scale-down right after a burst
    # A scale-down's SIGTERM lets the running piece finish.
    assert render["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 600


def test_worker_resources_fit_the_measured_memory():
    render = of_kind("Deployment")["zoomq-render"]["spec"]["template"]["spec"]["containers"][0]
    command = render["command"]
    models = command[command.index("--models") + 1:]
    need = sizing.BASE_BYTES + len(models) * FULL_SIZE_IR  # bf16; 3.4 GiB measured for one model
    request = parse_quantity(render["resources"]["requests"]["memory"])
    limit = parse_quantity(render["resources"]["limits"]["memory"])
    assert need <= request <= limit
    assert render["resources"]["limits"]["cpu"] == render["resources"]["requests"]["cpu"]  # whole cores: auto sizing
    assert "--concurrency" not in command  # auto: one process with the pod's CPU quota as threads


def parse_quantity(text: str) -> int:
    quantity = re.fullmatch(r"(\d+)(Gi|Mi)", text)
    assert quantity is not None, text
    number, unit = quantity.groups()
    return int(number) * {"Gi": GiB, "Mi": 2**20}[unit]


# -- the health file the checks read ----------------------------------------------------------

def test_health_file_is_fresh_while_the_worker_reaches_redis(tmp_path, tiny_t2i):
    """A real worker touches ZOOMQ_HEALTH_FILE at each heartbeat that reaches Redis; the compose
    health check's own command passes on it, and fails once the file is older than 30 s. With
    Redis gone the file is no longer touched."""
    command = next(t for t in yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-worker-health"]["test"]
                   if "find" in t).replace("$$", "$")
    health = tmp_path / "alive"
    command = command.replace("/tmp/zoomq-alive", str(health))
    server = RedisServer(tmp_path / "redis")
    worker = Worker("healthy", server.url, [tiny_t2i], tmp_path, env={"ZOOMQ_HEALTH_FILE": str(health)})

    def missed() -> int:  # heartbeats that could not reach Redis, as the worker logs them
        return worker.log_path.read_text(errors="replace").count("cannot reach Redis for heartbeat")

    try:
        wait_for(health.exists, 30, "the health file")
        first = health.stat().st_mtime
        wait_for(lambda: health.stat().st_mtime > first, 10, "a second heartbeat")
        assert subprocess.run(["sh", "-c", command]).returncode == 0
        before = missed()
        server.stop()
        # The first heartbeat to miss Redis comes after the last touch; then four more miss it.
        wait_for(lambda: missed() > before, 30, "a heartbeat to miss Redis")
        stopped, misses = health.stat().st_mtime, missed()
        wait_for(lambda: missed() >= misses + 4, 60, "four more heartbeats without Redis")
        assert health.stat().st_mtime == stopped
        os.utime(health, (time.time() - 60, time.time() - 60))
        assert subprocess.run(["sh", "-c", command]).returncode != 0
    finally:
        worker.stop()
        server.stop()

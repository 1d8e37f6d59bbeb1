"""The rendered overlays (k8s/overlays/dev and prod), checked for what matters in a cluster.

Every overlay renders with kustomize and validates against the Kubernetes schemas; then the
objects are read for the things a reviewer would check by hand: every container hardened,
probed and bounded; every setting the code requires present, with secrets only by reference;
ports and health names as the code serves them; scaling and network policy as documented.

The code's contract (deployables, ports, required and secret variables, health names) comes
from the deployables' own declarations (gateway/deployable.py, services/registry.py) and
`services.common.settings`, so a change there that the manifests miss fails here.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from services import registry
from services.common import db
from services.common.settings import SECRET_VARIABLES, Settings, load_settings

from .k8s_support import (
    DEFAULT_PORTS,
    HEALTH_NAMES,
    K8S,
    METRICS_PORT,
    OLDEST_KUBERNETES,
    OVERLAYS,
    REQUIRED_BY,
    SERVICES,
    Obj,
    Secretish,
    by_name,
    container_env,
    containers,
    deployment,
    deployment_name,
    main_container,
    of_kind,
    pod_spec,
    render,
    render_text,
    selector_matches,
)
from .k8s_support import DEPLOYABLES as FACTS

DEPLOYABLES = tuple(FACTS)
POSTGRES_KUSTOMIZATION = "infra/postgres"
#: Custom resources the overlays render (the Prometheus Operator's), checked field by field elsewhere.
CUSTOM_RESOURCES = ("monitoring.coreos.com/v1",)
#: What a secret's value looks like, should one ever be pasted into a manifest.
SECRET_VALUE = re.compile(r"whsec_[A-Za-z0-9]|\b[sr]k_(live|test)_[A-Za-z0-9]|postgres(ql)?://[^/\s:@]+:[^@\s]+@")


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objs(overlay: str) -> list[Obj]:
    return render(f"overlays/{overlay}")


def _placeholder(variable: str, secret: Secretish, mode: str) -> str:
    """A well-formed stand-in for a secret, so `load_settings` can check everything else."""
    return {
        "SYNCMESH_WEBHOOK_SECRETS": "whsec_placeholder",
        "SYNCMESH_STRIPE_API_KEY": f"sk_{mode}_placeholder",
        "SYNCMESH_DATABASE_URL": "postgresql://placeholder@localhost:5432/placeholder",
    }.get(variable, f"placeholder-for-{secret.secret}")


def _settings_for(objs: list[Obj], deployable: str) -> tuple[Settings, dict[str, Any]]:
    env = container_env(objs, main_container(deployment(objs, deployable)))
    mode = str(env.get("SYNCMESH_MODE", "test"))
    plain = {k: _placeholder(k, v, mode) if isinstance(v, Secretish) else v for k, v in env.items()}
    return load_settings(plain), env


# -- rendering and schemas ---------------------------------------------------------------------


def test_overlay_renders_and_validates_against_kubernetes_schemas(objs: list[Obj]) -> None:
    versions = sorted({OLDEST_KUBERNETES, f"{kubernetes_validate.latest_version()}.0"})
    seen: set[tuple[str, str]] = set()
    for obj in objs:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        assert obj["metadata"].get("namespace") == "syncmesh", f"{key} has no namespace syncmesh"
        if obj["apiVersion"] in CUSTOM_RESOURCES:
            continue  # no schema in kubernetes-validate: tests/k8s/test_k8s_monitoring.py reads them
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{key} is invalid for Kubernetes {version}: {exc.message}", pytrace=False)


def test_each_deployable_has_its_objects(objs: list[Obj], overlay: str) -> None:
    for deployable in DEPLOYABLES:
        name = deployment_name(deployable)
        for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"):
            assert name in by_name(objs, kind), f"{overlay}: no {kind} {name}"
        dep = deployment(objs, deployable)
        assert pod_spec(dep)["serviceAccountName"] == name
    extra = set(by_name(objs, "Deployment")) - {deployment_name(d) for d in DEPLOYABLES}
    assert not extra, f"Deployments for no known deployable: {extra}"


def test_each_deployable_runs_its_command(objs: list[Obj]) -> None:
    for deployable in DEPLOYABLES:
        container = main_container(deployment(objs, deployable))
        expected = ["gateway"] if deployable == "gateway" else ["serve", deployable]
        # The image's entrypoint is `syncmesh`; a `command` would bypass it.
        assert "command" not in container, f"{deployable}: set args, not command"
        assert container["args"][: len(expected)] == expected, f"{deployable}: args {container['args']}"
        image = container["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (
            f"{deployable}: image {image} must carry an explicit, non-latest tag"
        )


# -- the hardened pod ------------------------------------------------------------------------


def test_every_container_is_hardened_bounded_and_probed(objs: list[Obj]) -> None:
    for dep in of_kind(objs, "Deployment"):
        name = dep["metadata"]["name"]
        spec = pod_spec(dep)
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
        assert (pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: pod seccomp"
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token is needed"
        for container in containers(dep):
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext") or {}
            assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, f"{where}: runs as uid 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("privileged", False) is False, f"{where}: privileged"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert (sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
            assert not (sc.get("capabilities") or {}).get("add"), f"{where}: adds capabilities"
            assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{where}: seccomp"

            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in (resources.get(bound) or {}), f"{where}: no {bound}.{resource}"

            if container in pod_spec(dep)["containers"]:  # an init container cannot be probed; it exits
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert probe in container, f"{where}: no {probe}"

            env = container_env(objs, container)
            assert env.get("PYTHONDONTWRITEBYTECODE") == "1", f"{where}: PYTHONDONTWRITEBYTECODE=1"
            assert env.get("PYTHONUNBUFFERED") == "1", f"{where}: PYTHONUNBUFFERED=1"

            # A read-only root: the app's only writable place is an emptyDir at /tmp.
            volumes = {v["name"]: v for v in spec.get("volumes") or []}
            tmp = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir at /tmp"


def test_pods_spread_across_nodes(objs: list[Obj]) -> None:
    for dep in of_kind(objs, "Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        spread = [
            c
            for c in pod_spec(dep).get("topologySpreadConstraints") or []
            if c["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert spread, f"{dep['metadata']['name']}: no topology spread across nodes"
        assert selector_matches(spread[0]["labelSelector"], labels), "spread selector misses its own pods"


def test_termination_grace_outlasts_the_apps_shutdown(objs: list[Obj]) -> None:
    for deployable in DEPLOYABLES:
        dep = deployment(objs, deployable)
        settings, _ = _settings_for(objs, deployable)
        pre_stop = ((main_container(dep).get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        pause = int(pre_stop.get("seconds", 0))
        grace = int(pod_spec(dep).get("terminationGracePeriodSeconds", 30))
        assert grace > pause + settings.shutdown_grace_seconds, (
            f"{deployable}: terminationGracePeriodSeconds {grace} must exceed the preStop pause ({pause} s) "
            f"plus SYNCMESH_SHUTDOWN_GRACE_SECONDS ({settings.shutdown_grace_seconds:g} s)"
        )


# -- the code's contract: ports, probes, settings ---------------------------------------------


def test_ports_match_the_codes_defaults(objs: list[Obj]) -> None:
    services = by_name(objs, "Service")
    for deployable in DEPLOYABLES:
        settings, _ = _settings_for(objs, deployable)
        port = DEFAULT_PORTS[deployable]
        assert FACTS[deployable].port(settings) == port, f"{deployable}: the manifests override the default port"
        container = main_container(deployment(objs, deployable))
        declared = {p["name"]: p["containerPort"] for p in container["ports"] if p["name"] != "metrics"}
        assert list(declared.values()) == [port], f"{deployable}: containerPort {declared} != {port}"
        service = services[deployment_name(deployable)]
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port
        target = service_port["targetPort"]
        assert declared.get(target, target) == port, f"{deployable}: Service targets {target}"
        assert selector_matches(
            {"matchLabels": service["spec"]["selector"]},
            deployment(objs, deployable)["spec"]["template"]["metadata"]["labels"],
        ), f"{deployable}: Service selector misses the pods"


def test_gateway_probes_are_http_on_its_health_endpoints(objs: list[Obj]) -> None:
    container = main_container(deployment(objs, "gateway"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = container[probe].get("httpGet")
        assert http, f"gateway {probe} must be an HTTP probe"
        assert http["path"] == path, f"gateway {probe} on {http['path']}, expected {path}"
        assert ports.get(http["port"], http["port"]) == DEFAULT_PORTS["gateway"]


def test_service_probes_are_native_grpc_on_the_health_names(objs: list[Obj]) -> None:
    for deployable in SERVICES:
        container = main_container(deployment(objs, deployable))
        port = DEFAULT_PORTS[deployable]
        expected = {"startupProbe": "", "livenessProbe": "", "readinessProbe": HEALTH_NAMES[deployable]}
        for probe, service in expected.items():
            grpc = container[probe].get("grpc")
            assert grpc, f"{deployable} {probe} must be a native gRPC probe"
            assert grpc["port"] == port, f"{deployable} {probe} on port {grpc['port']}, expected {port}"
            assert grpc.get("service", "") == service, (
                f"{deployable} {probe} checks {grpc.get('service', '')!r}, expected {service!r}"
            )


def test_every_required_setting_is_provided(objs: list[Obj]) -> None:
    for deployable, required in REQUIRED_BY.items():
        _, env = _settings_for(objs, deployable)
        for variable in required:
            assert variable in env or f"{variable}_FILE" in env, (
                f"{deployable} needs {variable}: provide it in the ConfigMap or as a Secret reference"
            )
        # And the whole environment passes the code's own validation.
        settings, _ = _settings_for(objs, deployable)
        FACTS[deployable].require(settings)


def test_secrets_are_references_never_values(objs: list[Obj]) -> None:
    assert not of_kind(objs, "Secret"), "Secrets are created out of band (k8s/README.md), never rendered"
    for cm in of_kind(objs, "ConfigMap"):
        leaked = set(cm.get("data") or {}) & set(SECRET_VARIABLES)
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds secrets {leaked}"
    for dep, container in all_containers_with_env(objs):
        env = container_env(objs, container)
        for variable in SECRET_VARIABLES:
            value = env.get(variable)
            if value is None or isinstance(value, Secretish):
                continue
            # A database URL is secret only for the password it may carry: without one it is an
            # address and a role name, and the password comes from its own Secret.
            assert variable.endswith("DATABASE_URL") and urlsplit(value).password is None, (
                f"{dep}: {variable} must come from a secretKeyRef, not a literal"
            )


def all_containers_with_env(objs: list[Obj]) -> list[tuple[str, Obj]]:
    return [(d["metadata"]["name"], c) for d in of_kind(objs, "Deployment") for c in containers(d)]


def test_no_secret_value_anywhere_under_k8s(overlay: str) -> None:
    assert not SECRET_VALUE.search(render_text(f"overlays/{overlay}"))
    for path in sorted(K8S.rglob("*")):
        if path.is_file():
            hit = SECRET_VALUE.search(path.read_text(encoding="utf-8"))
            assert not hit, f"{path.relative_to(K8S)} holds what looks like a secret: {hit[0]!r}"


def test_each_service_logs_in_as_its_own_role_and_migrates_as_the_migration_role(objs: list[Obj]) -> None:
    """SECURITY.md's database identities: the service's own role for serving, with the password the
    Cluster's managed role reads; the migration role only in the init container that migrates."""
    (cluster,) = [o for o in render(POSTGRES_KUSTOMIZATION) if o["kind"] == "Cluster"]
    roles = {r["name"]: r["passwordSecret"]["name"] for r in cluster["spec"]["managed"]["roles"]}
    primary = f"{cluster['metadata']['name']}-rw"
    definitions = {d.name: d for d in registry.definitions()}
    for deployable in DEPLOYABLES:
        dep = deployment(objs, deployable)
        _, env = _settings_for(objs, deployable)
        if "SYNCMESH_DATABASE_URL" not in REQUIRED_BY[deployable]:
            assert "SYNCMESH_DATABASE_URL" not in env, (
                f"{deployable} needs no database and must not get its credentials"
            )
            assert not pod_spec(dep).get("initContainers"), f"{deployable} has no schema to migrate"
            continue
        role = db.runtime_role(definitions[deployable].schema)
        url = urlsplit(str(env["SYNCMESH_DATABASE_URL"]))
        assert (url.username, url.password, url.hostname) == (role, None, primary), f"{deployable}: {url.geturl()}"
        password = env["SYNCMESH_DATABASE_PASSWORD"]
        assert isinstance(password, Secretish) and (password.secret, password.key) == (roles[role], "password"), (
            f"{deployable}: the password must be the one CloudNativePG sets on {role}"
        )
        assert "SYNCMESH_MIGRATION_DATABASE_URL" not in env, f"{deployable} serves without the migration role"
        (migrate,) = pod_spec(dep)["initContainers"]
        assert migrate["args"] == ["migrate", deployable]
        init_env = container_env(objs, migrate)
        migration_url = urlsplit(str(init_env["SYNCMESH_MIGRATION_DATABASE_URL"]))
        assert (migration_url.username, migration_url.password) == (db.MIGRATION_ROLE, None)
        secret = init_env["SYNCMESH_MIGRATION_DATABASE_PASSWORD"]
        assert isinstance(secret, Secretish) and secret.secret == roles[db.MIGRATION_ROLE]
        assert migrate["image"] == main_container(dep)["image"], "the migrations of the image that serves"
    assert cluster["metadata"]["namespace"] == "syncmesh", "the role Secrets must be in the pods' namespace"


def test_telemetry_names_each_deployable(objs: list[Obj], overlay: str) -> None:
    names = set()
    for deployable in DEPLOYABLES:
        _, env = _settings_for(objs, deployable)
        names.add(env.get("OTEL_SERVICE_NAME"))
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if overlay == "prod":
            assert isinstance(endpoint, str) and urlsplit(endpoint).port, f"{deployable}: no OTLP endpoint"
    assert len(names) == len(DEPLOYABLES) and None not in names, f"OTEL_SERVICE_NAME not distinct: {names}"


# -- environments and scaling ----------------------------------------------------------------


def test_stream_replicas_and_mode_per_environment(objs: list[Obj], overlay: str) -> None:
    expected = {"dev": ("1", "test"), "prod": ("3", "live")}[overlay]
    for deployable in DEPLOYABLES:
        _, env = _settings_for(objs, deployable)
        assert (env.get("SYNCMESH_STREAM_REPLICAS"), env.get("SYNCMESH_MODE")) == expected, deployable


def test_prod_autoscales_every_deployable() -> None:
    objs = render("overlays/prod")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    for deployable in DEPLOYABLES:
        dep = deployment(objs, deployable)
        name = dep["metadata"]["name"]
        assert name in hpas, f"prod: no HorizontalPodAutoscaler for {name}"
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"], f"{name}: replicas {hpa}"
        assert "replicas" not in dep["spec"], f"{name}: the HPA owns replicas; the Deployment must not set it"
        for metric in hpa["metrics"]:
            if metric["type"] == "Resource":
                # Utilization is a percentage of the request: without one the HPA cannot act.
                requested = main_container(dep)["resources"]["requests"]
                assert metric["resource"]["name"] in requested


def test_dev_runs_one_replica_each_and_smaller() -> None:
    dev, prod = render("overlays/dev"), render("overlays/prod")
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    for deployable in DEPLOYABLES:
        assert deployment(dev, deployable)["spec"].get("replicas") == 1, deployable
        small = main_container(deployment(dev, deployable))["resources"]["requests"]
        big = main_container(deployment(prod, deployable))["resources"]["requests"]
        assert _millicores(small["cpu"]) < _millicores(big["cpu"]), deployable


def test_disruption_budgets_never_block_a_drain(objs: list[Obj]) -> None:
    for deployable in DEPLOYABLES:
        pdb = by_name(objs, "PodDisruptionBudget")[deployment_name(deployable)]["spec"]
        labels = deployment(objs, deployable)["spec"]["template"]["metadata"]["labels"]
        assert selector_matches(pdb["selector"], labels), f"{deployable}: PDB selects no pod"
        # minAvailable with one replica (dev, or a scaled-down HPA) would make every drain hang.
        assert "maxUnavailable" in pdb and "minAvailable" not in pdb, deployable


def _millicores(value: str | int) -> int:
    text = str(value)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


# -- network policy --------------------------------------------------------------------------


def _policies_for(objs: list[Obj], labels: dict[str, str], kind: str) -> list[Obj]:
    return [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if kind in p["spec"].get("policyTypes", []) and selector_matches(p["spec"]["podSelector"], labels)
    ]


def _egress_ports(policies: list[Obj]) -> set[int]:
    return {port["port"] for p in policies for rule in p["spec"].get("egress") or [] for port in rule["ports"]}


def test_network_policies_deny_by_default_and_allow_only_the_needed(objs: list[Obj]) -> None:
    nats_url = urlsplit(str(_settings_for(objs, "gateway")[0].nats_url))
    nats_service, nats_namespace = (nats_url.hostname or "").split(".")[:2]
    for deployable in DEPLOYABLES:
        labels = deployment(objs, deployable)["spec"]["template"]["metadata"]["labels"]
        ingress = _policies_for(objs, labels, "Ingress")
        egress = _policies_for(objs, labels, "Egress")
        assert any(not p["spec"].get("ingress") for p in ingress), f"{deployable}: no default-deny ingress"
        assert any(not p["spec"].get("egress") for p in egress), f"{deployable}: no default-deny egress"

        ingress_ports = {port["port"] for p in ingress for r in p["spec"].get("ingress") or [] for port in r["ports"]}
        own_port = DEFAULT_PORTS[deployable]
        assert own_port in ingress_ports, f"{deployable}: its port {own_port} is unreachable"
        assert ingress_ports <= {*DEFAULT_PORTS.values(), METRICS_PORT}, f"{deployable}: ingress on {ingress_ports}"
        from_ingress = [
            r
            for p in ingress
            for r in p["spec"].get("ingress") or []
            if any(
                "syncmesh.io/ingress" in ((f.get("namespaceSelector") or {}).get("matchLabels") or {})
                for f in r.get("from") or []
            )
        ]
        assert bool(from_ingress) == (deployable == "gateway"), f"{deployable}: reachable from the ingress"

        ports = _egress_ports(egress)
        assert {53, nats_url.port} <= ports, f"{deployable}: no egress to DNS and NATS ({ports})"
        nats_rules = [
            r
            for p in egress
            for r in p["spec"].get("egress") or []
            if any(port["port"] == nats_url.port for port in r["ports"])
        ]
        assert any(
            (t.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
            == nats_namespace
            for r in nats_rules
            for t in r["to"]
        ), f"{deployable}: NATS egress does not reach namespace {nats_namespace} ({nats_service})"
        if deployable == "gateway":
            assert not ports & {5432, 443}, "the gateway needs neither PostgreSQL nor Stripe's API"
        else:
            assert {5432, 443} <= ports, f"{deployable}: no egress to PostgreSQL and Stripe"
        allowed = {53, 443, 4222, 4317, 4318, 5432, *DEFAULT_PORTS.values()} - {DEFAULT_PORTS["gateway"]}
        assert ports <= allowed, f"{deployable}: unexpected egress ports {ports - allowed}"


def test_each_deployable_connects_to_nats_as_itself(objs: list[Obj]) -> None:
    """User = the deployable's name, password from the `syncmesh-nats` Secret under that name:
    the identities launcher/natsauth.py derives from the roster (and nats-values.yaml declares)."""
    for deployable in DEPLOYABLES:
        env = container_env(objs, main_container(deployment(objs, deployable)))
        assert env.get("SYNCMESH_NATS_USER") == deployable, f"{deployable} does not connect to NATS as itself"
        password = env.get("SYNCMESH_NATS_PASSWORD")
        assert isinstance(password, Secretish), f"{deployable}: SYNCMESH_NATS_PASSWORD must come from a Secret"
        assert (password.secret, password.key) == ("syncmesh-nats", deployable)


def test_each_service_requires_grpc_callers_to_authenticate(objs: list[Obj]) -> None:
    """Authentication is on in every cluster (issue 17): each service reads its callers' tokens
    from a file mounted from the `syncmesh-grpc-tokens` Secret, as a directory (a subPath mount
    would never see a rotated token)."""
    for name in registry.names():
        spec = deployment(objs, name)["spec"]["template"]["spec"]
        container = main_container(deployment(objs, name))
        path = container_env(objs, container).get("SYNCMESH_GRPC_TOKENS_FILE")
        assert isinstance(path, str) and path.startswith("/"), f"{name} runs with gRPC authentication off"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = [
            m
            for m in container.get("volumeMounts", [])
            if path.startswith(m["mountPath"].rstrip("/") + "/") and "subPath" not in m
        ]
        assert mounts, f"{name}: nothing is mounted where SYNCMESH_GRPC_TOKENS_FILE points ({path})"
        secret = volumes[mounts[0]["name"]].get("secret", {})
        assert secret.get("secretName") == "syncmesh-grpc-tokens", f"{name}: the tokens file must come from a Secret"

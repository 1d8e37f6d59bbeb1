"""The infrastructure the mesh runs on (k8s/infra) and the README that installs it.

CloudNativePG's `Cluster` is a custom resource with no schema in kubernetes-validate, so its
fields are checked here directly; the NATS Helm values are read as the chart would read them.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import kubernetes_validate
import pytest

from services import registry
from services.common import db
from services.common.db import create_pool

from .k8s_support import (
    K8S,
    OLDEST_KUBERNETES,
    REQUIRED_BY,
    Obj,
    by_name,
    container_env,
    containers,
    load_yaml,
    main_container,
    of_kind,
    render,
)

README = K8S / "README.md"


def _cluster(kustomization: str) -> Obj:
    (cluster,) = [o for o in render(kustomization) if o["kind"] == "Cluster"]
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    return cluster


def _mesh_setting(overlay: str, variable: str) -> str:
    objs = render(f"overlays/{overlay}")
    value = container_env(objs, main_container(by_name(objs, "Deployment")["syncmesh-gateway"]))[variable]
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize("kustomization", ["infra/postgres", "infra/postgres-dev"])
def test_infra_renders_into_the_mesh_namespace(kustomization: str) -> None:
    objs = render(kustomization)
    namespaces = by_name(objs, "Namespace")
    assert set(namespaces) == {"syncmesh"}, "the Cluster's app Secret must land in the mesh's namespace"
    labels = namespaces["syncmesh"]["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for obj in objs:
        if obj["kind"] == "Namespace":
            kubernetes_validate.validate(obj, OLDEST_KUBERNETES, strict=True)
        else:
            assert obj["metadata"]["namespace"] == "syncmesh"


def test_production_postgres_is_three_instances_with_synchronous_replication() -> None:
    spec = _cluster("infra/postgres")["spec"]
    assert spec["instances"] == 3
    sync = spec["postgresql"]["synchronous"]
    assert sync["method"] in ("any", "first")
    assert 1 <= sync["number"] < spec["instances"]
    assert sync.get("dataDurability", "required") == "required"
    assert spec["bootstrap"]["initdb"]["database"], "one database for all services (a schema each)"
    assert spec["affinity"]["podAntiAffinityType"] == "required", "instances on different nodes"


def test_dev_postgres_is_one_instance_without_a_standby_to_wait_for() -> None:
    spec = _cluster("infra/postgres-dev")["spec"]
    assert spec["instances"] == 1
    assert "synchronous" not in spec.get("postgresql", {}), "synchronous replication needs a standby"
    assert spec.get("enablePDB") is False, "a PDB on one instance blocks every drain"
    assert _cluster("infra/postgres-dev")["metadata"]["name"] == _cluster("infra/postgres")["metadata"]["name"]


@pytest.mark.parametrize("kustomization", ["infra/postgres", "infra/postgres-dev"])
def test_postgres_declares_a_role_per_service_and_the_migration_role_owns_the_database(kustomization: str) -> None:
    spec = _cluster(kustomization)["spec"]
    assert spec["bootstrap"]["initdb"]["owner"] == db.MIGRATION_ROLE, "the migration role creates the schemas"
    roles = {r["name"]: r for r in spec["managed"]["roles"]}
    wanted = {db.MIGRATION_ROLE, *(db.runtime_role(d.schema) for d in registry.definitions())}
    assert set(roles) == wanted
    for name, role in roles.items():
        assert role["login"] is True and role.get("ensure", "present") == "present", name
        for power in ("superuser", "createdb", "createrole", "replication", "bypassrls"):
            assert not role.get(power), f"{name} must not have {power}"
        assert role["passwordSecret"]["name"].startswith("syncmesh-pg-"), name
    assert spec["bootstrap"]["initdb"]["secret"]["name"] == roles[db.MIGRATION_ROLE]["passwordSecret"]["name"]


def test_production_postgres_archives_wal_and_backs_up_nightly_for_point_in_time_recovery() -> None:
    objs = render("infra/postgres")
    spec = _cluster("infra/postgres")["spec"]
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"] and store["wal"]["compression"]
    assert spec["backup"]["retentionPolicy"].endswith("d")
    assert spec["postgresql"]["parameters"]["archive_timeout"], "a quiet ledger still ships its WAL"
    (scheduled,) = of_kind(objs, "ScheduledBackup")
    assert scheduled["spec"]["cluster"]["name"] == _cluster("infra/postgres")["metadata"]["name"]
    assert scheduled["spec"]["method"] == "barmanObjectStore"
    assert len(scheduled["spec"]["schedule"].split()) == 6, "CloudNativePG's schedule has a seconds field"
    text = README.read_text(encoding="utf-8")
    assert "## Restoring to a point in time" in text and "recoveryTarget" in text and "targetTime" in text
    # And every Secret the Cluster reads is one the README creates.
    secrets = {store["s3Credentials"]["accessKeyId"]["name"]}
    secrets |= {r["passwordSecret"]["name"] for r in spec["managed"]["roles"]}
    for name in secrets:
        assert re.search(rf"create secret generic {re.escape(name)}\b", text), f"k8s/README.md never creates {name}"


def test_dev_postgres_has_the_roles_but_no_backups_without_an_object_store() -> None:
    objs = render("infra/postgres-dev")
    assert "backup" not in _cluster("infra/postgres-dev")["spec"]
    assert not of_kind(objs, "ScheduledBackup")


def _nats_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = load_yaml(K8S / "infra" / name)
    return values


def test_nats_values_make_a_three_node_jetstream_cluster_on_files() -> None:
    config = _nats_values("nats-values.yaml")["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream.get("memoryStore", {}).get("enabled") is False
    # A stream cannot have more replicas than there are servers.
    assert int(_mesh_setting("prod", "SYNCMESH_STREAM_REPLICAS")) == 3 <= config["cluster"]["replicas"]


def test_dev_nats_values_fit_the_dev_stream_replicas() -> None:
    config = _nats_values("nats-values-dev.yaml")["config"]
    servers = config["cluster"]["replicas"] if config["cluster"]["enabled"] else 1
    assert config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]["enabled"] is True
    assert int(_mesh_setting("dev", "SYNCMESH_STREAM_REPLICAS")) <= servers


def test_readme_installs_in_order_with_the_files_here() -> None:
    text = README.read_text(encoding="utf-8")
    steps = [
        "--values k8s/infra/nats-values.yaml",
        "helm upgrade --install cnpg cnpg/cloudnative-pg",
        "kubectl apply -k k8s/infra/postgres",
        "kubectl -n syncmesh create secret generic syncmesh-stripe",
        "kubectl apply -k k8s/overlays/prod",
    ]
    positions = []
    for step in steps:
        assert step in text, f"k8s/README.md lacks the step {step!r}"
        positions.append(text.index(step))
    assert positions == sorted(positions), "k8s/README.md gives the install steps out of order"
    for path in re.findall(r"(?<![\w./-])k8s/[\w./-]+", text):
        assert (K8S.parent / path.rstrip(".")).exists(), f"k8s/README.md names {path}, which does not exist"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_readme_creates_every_secret_the_manifests_reference(overlay: str) -> None:
    text = README.read_text(encoding="utf-8")
    objs = render(f"overlays/{overlay}")
    app_secret = f"{_cluster('infra/postgres')['metadata']['name']}-app"
    for dep in by_name(objs, "Deployment").values():
        for var in [v for c in containers(dep) for v in c.get("env") or []]:
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if not ref or ref["name"] == app_secret:  # written by CloudNativePG
                continue
            create = re.search(rf"create secret generic {re.escape(ref['name'])}\b(.*?)(?:\n\n|```)", text, re.S)
            assert create, f"k8s/README.md never creates Secret {ref['name']}"
            assert re.search(rf"--from-(file|literal)={re.escape(ref['key'])}=", create[1]), (
                f"k8s/README.md creates {ref['name']} without its key {ref['key']}"
            )


def test_postgres_connection_budget_covers_the_autoscaled_services() -> None:
    """Every service replica the HPAs may start holds a full pool without exhausting PostgreSQL."""
    pool_size = inspect.signature(create_pool).parameters["max_size"].default
    objs = render("overlays/prod")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in of_kind(objs, "HorizontalPodAutoscaler")}
    needs_db = [f"syncmesh-{d}" for d, required in REQUIRED_BY.items() if "SYNCMESH_DATABASE_URL" in required]
    peak = sum(hpas[name]["maxReplicas"] for name in needs_db) * pool_size
    max_connections = int(_cluster("infra/postgres")["spec"]["postgresql"]["parameters"]["max_connections"])
    headroom = 20  # superuser-reserved slots, the operator, backups, a psql session
    assert peak + headroom <= max_connections, (
        f"at maxReplicas the services open {peak} connections; max_connections is {max_connections}"
    )


@pytest.mark.parametrize("name", ["nats-values.yaml", "nats-values-dev.yaml"])
def test_nats_values_authenticate_every_client_as_the_roster_says(name: str) -> None:
    """The users are the ones `syncmesh nats-auth` derives from the roster (a fourth service
    fails here until its user is added), each password from the `nats-users` Secret; any other
    user is a subscriber team with exactly a subscriber's permissions. JetStream syncs every
    write to disk before acking, as the README promises and the embedded server does."""
    from launcher.natsauth import helm_values, password_variable, roster_identities, subscriber_identity

    values = _nats_values(name)
    declared = {u["user"]: u for u in values["config"]["merge"]["authorization"]["users"]}
    wanted = helm_values(roster_identities())
    for user in wanted["config"]["merge"]["authorization"]["users"]:  # type: ignore[index]
        differs = f"{name}: user {user['user']} differs from `syncmesh nats-auth`"
        assert declared.pop(user["user"], None) == user, differs
    for team, user in declared.items():
        expected = helm_values([subscriber_identity(team)])["config"]["merge"]["authorization"]["users"][0]  # type: ignore[index]
        assert user == expected, f"{name}: {team} is neither a mesh identity nor a subscriber"
    env = values["container"]["env"]
    for user in values["config"]["merge"]["authorization"]["users"]:
        ref = env[password_variable(user["user"])]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "nats-users", "key": user["user"]}
        assert user["password"] == f"<< ${password_variable(user['user'])} >>"
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"


def test_only_the_mesh_nats_box_and_labelled_namespaces_reach_nats() -> None:
    policy = load_yaml(K8S / "infra" / "nats-network-policy.yaml")
    for version in sorted({OLDEST_KUBERNETES, f"{kubernetes_validate.latest_version()}.0"}):
        kubernetes_validate.validate(policy, version, strict=True)
    assert policy["metadata"]["namespace"] == "nats" and policy["spec"]["policyTypes"] == ["Ingress"]
    nats_pods = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}
    assert policy["spec"]["podSelector"]["matchLabels"] == nats_pods
    by_port = {port["port"]: rule["from"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    clients = by_port[4222]
    assert {"namespaceSelector": {"matchLabels": {"syncmesh.io/nats-client": "true"}}} in clients
    assert {"podSelector": {}} in clients  # nats-box, in NATS's own namespace
    mesh = {"matchLabels": {"kubernetes.io/metadata.name": "syncmesh"}}
    assert any(peer.get("namespaceSelector") == mesh and "podSelector" in peer for peer in clients)
    assert all(peer.get("namespaceSelector") != {} for peer in clients), "no namespace may reach NATS unlabelled"
    assert by_port[6222] == [{"podSelector": {"matchLabels": nats_pods}}], "routes only between NATS servers"


@pytest.mark.parametrize("kustomization", ["infra/postgres", "infra/postgres-dev"])
def test_only_the_mesh_its_instances_and_the_operator_reach_postgres(kustomization: str) -> None:
    """Passwords are the second line: a pod of another app in the namespace cannot even try one."""
    (policy,) = of_kind(render(kustomization), "NetworkPolicy")
    for version in sorted({OLDEST_KUBERNETES, f"{kubernetes_validate.latest_version()}.0"}):
        kubernetes_validate.validate(policy, version, strict=True)
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"cnpg.io/cluster": _cluster(kustomization)["metadata"]["name"]}
    }
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port = {port["port"]: rule["from"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert set(by_port) == {5432, 8000, 9187}
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "stripe-sync-mesh"}}} in by_port[5432]
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cnpg-system"}}}
    assert by_port[8000] == [operator]
    for peers in by_port.values():
        assert {"podSelector": {}} not in peers and all(p.get("namespaceSelector") != {} for p in peers), (
            "no unlabelled pod or namespace may reach PostgreSQL"
        )

"""One roster of services: every list of services is derived from services/registry.py.

A real fourth service touches its own folder (services/<name>/: app.py with its
`DEFINITION`, api, handlers, migrations, cli.py, demo.py, verify.py), its protos
(protos/syncmesh/<name>/v1/, regenerated into contracts/), and outside those exactly 7 files
(docs/adding-a-service.md):

    1. services/registry.py                          one line in PACKAGES
    2. k8s/base/<name>/kustomization.yaml            the grpc-service component, as a sibling's
    3. k8s/base/<name>/values.yaml                   its name, port and health name
    4. k8s/base/kustomization.yaml                   one line in resources
    5. k8s/components/network-policies/ingress.yaml  its port, reachable
    6. k8s/components/network-policies/egress.yaml   its port, callable inside the namespace
    7. Dockerfile                                    its port in EXPOSE

(plus its row in k8s/README.md's table, for readers). Everything else is derived: the
launcher's `serve` choices and subcommands, `syncmesh up`'s services and demo report, the
runtime's port variable, the operator tools' choices, the benchmark's services, the test
fixtures' ports and the Kubernetes checks. `test_a_fourth_service_appears_in_every_derived_list`
shows it with a toy; `test_every_service_is_in_every_list_kept_by_hand` fails when a real
service is missing from one of the 7; `test_service_names_appear_only_in_the_roster` keeps
new hand-kept lists from growing back.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.deployable import GATEWAY
from services import registry
from services.common import db
from services.common.settings import load_settings
from tests.k8s.k8s_support import by_name, of_kind, render

REPO = Path(__file__).resolve().parents[2]
TOY = "tests.roster.ledger"
SERVICE_ENV = {"SYNCMESH_NATS_URL": "nats://127.0.0.1:4222", "SYNCMESH_DATABASE_URL": "postgresql://127.0.0.1/x"}


@pytest.fixture
def with_toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's seam: a fourth package, without editing services/registry.py."""
    monkeypatch.setattr(registry, "PACKAGES", (*registry.PACKAGES, TOY))


def _subcommands(parser: argparse.ArgumentParser, *path: str) -> dict[str, argparse.ArgumentParser]:
    for name in ("", *path):
        if name:
            parser = _subcommands(parser)[name]
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _choices(parser: argparse.ArgumentParser, dest: str) -> tuple[str, ...]:
    (action,) = [a for a in parser._actions if a.dest == dest]
    return tuple(action.choices or ())


# -- each service declares itself ------------------------------------------------------------


def test_each_service_declares_its_facts_once_in_its_definition() -> None:
    definitions = registry.definitions()
    assert [d.name for d in definitions] == list(registry.names())
    ports = [GATEWAY.default_port, *(d.default_port for d in definitions)]
    assert 0 not in ports and len(set(ports)) == len(ports), f"ports must be set and distinct: {ports}"
    for package, d in zip(registry.PACKAGES, definitions, strict=True):
        assert d.name == registry.name_of(package)
        assert d.port_variable == f"SYNCMESH_{d.name.upper().replace('-', '_')}_PORT"
        d.deployable.require(load_settings(SERVICE_ENV))  # every required variable is a real setting
        assert d.cli and hasattr(importlib.import_module(d.cli), "register"), f"{d.name}: no CLI module"
        assert d.demo and hasattr(importlib.import_module(d.demo), "demo_report"), f"{d.name}: no demo report"
        verify = registry.hook(d.verify)  # optional until every service has its checks
        assert verify is None or hasattr(verify, "CHECKS"), f"{d.verify} has no CHECKS"
    assert registry.by_name("crm-export") is definitions[registry.names().index("crm-export")]


@pytest.mark.integration  # a child Python, to see what importing the names costs
def test_the_names_cost_no_service_import() -> None:
    """`syncmesh gateway` and `syncmesh serve X` build a parser with the names; neither may load
    the services' runtime or another service just to know what is there."""
    probe = (
        "import sys, launcher.cli; from services import registry; registry.names(); "
        "launcher.cli.build_parser(with_extensions=False); "
        "loaded = [m for m in sys.modules if m == 'services.common.service' or m.endswith('.app')]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


# -- (a) a toy fourth service ------------------------------------------------------------------


@pytest.mark.usefixtures("with_toy")
def test_a_fourth_service_appears_in_every_derived_list() -> None:
    from bench.env import available_services as bench_services
    from launcher.cli import build_parser, extensions
    from launcher.up import available_services as up_services
    from ops.dlq import dlq_subject

    toy = registry.by_name("ledger")
    assert registry.names()[-1] == "ledger" and registry.definitions()[-1] is toy

    # The launcher: `serve` choices, the toy's own subcommand, and the operator tools' choices.
    parser = build_parser()
    commands = _subcommands(parser)
    assert "ledger" in _choices(commands["serve"], "service")
    assert TOY + ".cli" in extensions()
    assert "ledger" in _subcommands(parser, "import")
    assert "ledger" in _choices(_subcommands(parser, "dlq")["list"], "service")
    assert "ledger" in _choices(commands["replay"], "service")
    assert parser.parse_args(["serve", "ledger"]).service == "ledger"

    # The runtime's settings: its port variable, its default, 0 for the OS to pick.
    assert toy.port(load_settings({})) == 50054
    assert toy.port(load_settings({"SYNCMESH_LEDGER_PORT": "0"})) == 0

    # The operator tools, the benchmark, `syncmesh up` and its demo report.
    assert dlq_subject("ledger") == "dlq.ledger"
    assert bench_services()["ledger"] == "ok"
    assert list(up_services())[-1] == "ledger"
    demo = registry.hook(toy.demo)
    assert demo is not None and hasattr(demo, "demo_report")
    assert registry.hook(toy.verify) is None  # no checks: verify is optional


def test_without_the_toy_the_roster_is_the_three_real_services() -> None:
    assert "ledger" not in registry.names()


# -- (b) a real service missing from a list kept by hand ----------------------------------------


def _values(name: str) -> dict[str, Any]:
    path = REPO / "k8s" / "base" / name / "values.yaml"
    assert path.is_file(), f"k8s/base/{name}/values.yaml is missing (docs/adding-a-service.md)"
    values: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return values


def _exposed() -> set[int]:
    lines = [
        line for line in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines() if line.startswith("EXPOSE")
    ]
    return {int(p.split("/")[0]) for line in lines for p in line.split()[1:]}


def _policy_ports(objs: list[dict[str, Any]], name: str, direction: str) -> set[int]:
    policy = by_name(objs, "NetworkPolicy")[name]
    return {port["port"] for rule in policy["spec"][direction] for port in rule["ports"]}


@pytest.mark.integration  # kubectl kustomize renders the manifests
def test_every_service_is_in_every_list_kept_by_hand() -> None:
    base = yaml.safe_load((REPO / "k8s" / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    objs = render("overlays/prod")
    deployments = by_name(objs, "Deployment")
    for d in registry.definitions():
        assert d.name in base["resources"], f"k8s/base/kustomization.yaml does not list {d.name}"
        values = _values(d.name)
        assert values["kind"] == "GrpcService" and values["metadata"]["name"] == d.name
        spec = dict(values["spec"])
        database_user = urlsplit(spec.pop("databaseUrl", "")).username
        assert spec == {"name": d.name, "port": d.default_port, "health": d.grpc_service_name}, (
            f"k8s/base/{d.name}/values.yaml differs from the service's definition"
        )
        assert database_user == db.runtime_role(d.schema), (
            f"k8s/base/{d.name}/values.yaml: databaseUrl must log in as {db.runtime_role(d.schema)} (its own role)"
        )
        assert f"syncmesh-{d.name}" in deployments, f"no Deployment for {d.name}"
        assert d.default_port in _policy_ports(objs, "syncmesh-services-grpc-ingress", "ingress"), (
            f"network policy: {d.name}'s port {d.default_port} is unreachable"
        )
        assert d.default_port in _policy_ports(objs, "syncmesh-egress-grpc", "egress"), (
            f"network policy: {d.name}'s port {d.default_port} cannot be called inside the namespace"
        )
        assert d.default_port in _exposed(), f"Dockerfile: EXPOSE lacks {d.name}'s port {d.default_port}"
    assert GATEWAY.default_port in _exposed()
    rendered_services = {
        o["metadata"]["name"]
        for o in of_kind(objs, "Deployment")
        if o["metadata"]["name"] != f"syncmesh-{GATEWAY.name}"
    }
    assert rendered_services == {f"syncmesh-{n}" for n in registry.names()}, "k8s runs a service the code lacks"


# -- (c) no hand-kept lists of service names ------------------------------------------------

SERVICE_NAMES = {"customer", "billing", "crm-export", "crm_export"}
SERVICE_MODULE = re.compile(r"\bservices\.(customer|billing|crm_export)\b")
#: Where the runtime and the tools around the services live. (Tests and the benchmark's read and
#: replay sections name the services whose APIs they exercise, as a test names what it tests.)
SCANNED = ("gateway", "services/common", "launcher", "ops", "bench/env.py", "bench/serve.py")


#: Modules whose strings are Stripe's vocabulary, where "customer" is Stripe's object type.
STRIPE_VOCABULARY = ("services/common/stripe_shapes.py",)


def _python_files() -> Iterator[Path]:
    for entry in SCANNED:
        path = REPO / entry
        found = [path] if path.is_file() else sorted(path.rglob("*.py"))
        yield from (f for f in found if f.relative_to(REPO).as_posix() not in STRIPE_VOCABULARY)


def _docstrings(tree: ast.AST) -> set[int]:
    bodies = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, bodies)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _stripe_request_keys(tree: ast.AST) -> set[int]:
    """Keys of the dicts passed to Stripe's SDK (`client.v1.*`): Stripe's own `customer`
    parameter names a Stripe object, not the customer service."""
    return {
        id(key)
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and ".v1." in ast.unparse(call.func)
        for arg in call.args
        for node in ast.walk(arg)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if key is not None
    }


def _service_names_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree) | _stripe_request_keys(tree)
    found = []
    for node in ast.walk(tree):
        words: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            words = [node.value] if node.value in SERVICE_NAMES or SERVICE_MODULE.search(node.value) else []
        elif isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words = [node.name]
        elif isinstance(node, ast.Import):
            words = [a.name for a in node.names if SERVICE_MODULE.search(a.name)]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module] if node.module and SERVICE_MODULE.search(node.module) else []
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
        found += [f"{shown}:{getattr(node, 'lineno', 0)}: {w!r}" for w in words if w in SERVICE_NAMES or "." in w]
    return found


def test_service_names_appear_only_in_the_roster() -> None:
    found = [hit for path in _python_files() for hit in _service_names_in(path)]
    assert not found, "service names outside services/registry.py and the services' folders:\n" + "\n".join(found)


def test_the_scan_would_see_a_hand_kept_list(tmp_path: Path) -> None:
    sample = tmp_path / "hand_kept.py"
    sample.write_text(
        '"""customer, billing: a docstring may say them."""\n'
        'SERVICES = ("customer", "billing")\n'
        "from services.crm_export import app\n"
        'client.v1.subscriptions.create_async({"customer": "cus_1"})  # Stripe\'s parameter\n'
    )
    assert len(_service_names_in(sample)) == 3

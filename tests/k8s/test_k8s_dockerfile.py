"""The Dockerfile, checked without building it: hadolint, then the image's rules.

One multi-stage image on a slim Python base; dependencies in their own layer (before the
source is copied, so code changes reuse it); a non-root user matching the pods' runAsUser;
`syncmesh` as the entrypoint so `gateway` or `serve <service>` selects the deployable.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field

from .k8s_support import DEFAULT_PORTS, REPO, by_name, hadolint, pod_spec, render

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, and each stage's instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert match, f"unreadable FROM {rest!r}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), match[1])
            stages.append(Stage(base=base, name=match[2]))
        elif not stages:
            if keyword == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def test_hadolint_finds_nothing() -> None:
    out = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"hadolint:\n{out.stdout}{out.stderr}"


def test_multi_stage_on_a_slim_python_base() -> None:
    _, stages = _stages()
    assert len(stages) >= 2, "build and runtime stages"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        if image in {s.name for s in stages}:
            continue
        assert image in ("python", "docker.io/library/python"), f"base {stage.base} is not the official Python"
        assert "slim" in tag and re.match(r"3\.\d+", tag), f"base {stage.base}: use a pinned 3.x slim tag"
    runtime = stages[-1]
    assert any(src.startswith("--from=") for src in runtime.all("COPY")), "runtime copies the built venv"
    assert not any(kw == "ADD" for s in stages for kw, _ in s.instructions), "use COPY, not ADD"


def test_dependencies_install_in_their_own_layer_before_the_source() -> None:
    _, stages = _stages()
    build = next(s for s in stages if any("pip install" in r for r in s.all("RUN")))
    seen_copies: list[str] = []
    for keyword, rest in build.instructions:
        if keyword == "COPY":
            seen_copies.append(rest)
        if keyword == "RUN" and "pip install" in rest:
            # The contracts are a distribution the project depends on: they install with the
            # dependencies, in the same layer, before any of the project's own source.
            assert seen_copies == ["pyproject.toml requirements.lock ./", "contracts ./contracts"], (
                "the first pip install must see only pyproject.toml, requirements.lock and contracts/ "
                f"(copied so far: {seen_copies})"
            )
            assert "-r requirements.lock" in rest, "install the locked dependencies, not the project, first"
            break
    copied = " ".join(build.all("COPY"))
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        directory = package.rstrip("*")
        assert (REPO / directory).is_dir(), f"package {directory} missing from the repository"
        assert re.search(rf"\b{re.escape(directory)}\b", copied), f"the build stage never copies {directory}/"
    readme = PYPROJECT["project"].get("readme")
    if readme:
        assert readme in copied, f"pyproject.toml names readme {readme}: the build needs it copied"


def test_runtime_runs_syncmesh_as_the_pods_non_root_user() -> None:
    _, stages = _stages()
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot can verify it)"
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["syncmesh"]
    env = " ".join(runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    exposed = {int(p.split("/")[0]) for line in runtime.all("EXPOSE") for p in line.split()}
    assert set(DEFAULT_PORTS.values()) <= exposed, f"EXPOSE {exposed}, the code listens on {DEFAULT_PORTS}"
    for overlay in ("dev", "prod"):
        for dep in by_name(render(f"overlays/{overlay}"), "Deployment").values():
            sc = pod_spec(dep)["securityContext"]
            assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == (uid, gid or uid), (
                f"{overlay}/{dep['metadata']['name']} runs as {sc['runAsUser']}, the image as {users[-1]}"
            )


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "start from nothing (allow-list), so .git, .venv and local state never leak"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    needed = {"pyproject.toml", PYPROJECT["project"].get("readme", "pyproject.toml")}
    needed |= {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert needed <= allowed, f".dockerignore excludes {needed - allowed}, which the build copies"
    for never in (".git", ".venv", "tests", ".syncmesh", "k8s"):
        assert never not in allowed, f".dockerignore lets {never} into the build context"
    assert "**/__pycache__" in lines


def test_the_lock_pins_every_dependency_within_its_bounds() -> None:
    """requirements.lock (scripts/lock) satisfies pyproject.toml and the contracts' own
    requirements: a bound changed without relocking fails here, not in an image build."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    contracts = tomllib.loads((REPO / "contracts" / "pyproject.toml").read_text(encoding="utf-8"))
    own = {"stripe-sync-mesh-contracts"}
    for raw in [*PYPROJECT["project"]["dependencies"], *contracts["project"]["dependencies"]]:
        requirement = Requirement(raw)
        name = canonicalize_name(requirement.name)
        if name in own:
            continue
        assert name in pins, f"{name} is a dependency but not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run scripts/lock"
        )

"""The roster: the one list of the mesh's services.

Each service declares itself once, in its own folder (`services/<package>/app.py`'s
`DEFINITION`: name, port, required settings, subjects, applier, CLI, demo report, verify
checks). This list says which packages are services; everything that used to keep its own
list of service names (the launcher's `serve` choices and extensions, `syncmesh up`, the demo
report, the operator tools, the benchmark, the test fixtures, the Kubernetes checks) asks here.
Adding a service is one line below (docs/adding-a-service.md).

A service's name is its package's last part with `_` spelt `-` (`services.crm_export` ->
`crm-export`), so the names are known without importing any service: `syncmesh serve
customer` loads the customer service alone, and `syncmesh --help` stays fast. A test holds
every `DEFINITION.name` to that rule.

The seam for tests is `PACKAGES`, read at every call: a test adds a toy package to it (pytest's
monkeypatch) and every derived list includes the toy, without editing this file.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from services.common.errors import SettingsError

if TYPE_CHECKING:  # the runtime is imported with the first service, not with the names: the
    # gateway's process (`syncmesh gateway`) never loads the services' runtime.
    from services.common.service import ServiceDefinition

#: The service packages, in the order the mesh starts them and reports list them.
PACKAGES: tuple[str, ...] = ("services.customer", "services.billing", "services.crm_export")


def name_of(package: str) -> str:
    """`services.crm_export` -> `crm-export`: the service name its package spells."""
    return package.rsplit(".", 1)[-1].replace("_", "-")


def _present(packages: Sequence[str] | None) -> list[str]:
    """The listed packages this build contains (an image may leave a service out)."""
    return [p for p in (PACKAGES if packages is None else packages) if importlib.util.find_spec(p) is not None]


def names(packages: Sequence[str] | None = None) -> tuple[str, ...]:
    """The services' names, without importing any of them."""
    return tuple(name_of(p) for p in _present(packages))


def load(packages: Sequence[str] | None = None) -> tuple[ServiceDefinition, ...]:
    """Each package's `app.DEFINITION`, in roster order (imports every service)."""
    return tuple(_definition(p) for p in _present(packages))


def definitions() -> tuple[ServiceDefinition, ...]:
    """Every service of this build."""
    return load()


def by_name(name: str) -> ServiceDefinition:
    """One service's definition, importing that service alone; SettingsError for an unknown name."""
    for package in _present(None):
        if name_of(package) == name:
            return _definition(package)
    raise SettingsError(f"unknown service {name!r}: choose one of {', '.join(names())}")


def hook(module_name: str | None) -> ModuleType | None:
    """A module a definition names (`cli`, `demo`, `verify`), or None when the definition names
    none or this build lacks it; an import error inside the module itself still raises."""
    if module_name is None:
        return None
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def _definition(package: str) -> ServiceDefinition:
    from services.common.service import ServiceDefinition

    definition = importlib.import_module(f"{package}.app").DEFINITION
    if not isinstance(definition, ServiceDefinition):
        raise TypeError(f"{package}.app.DEFINITION is a {type(definition).__name__}, not a ServiceDefinition")
    if definition.name != name_of(package):
        raise TypeError(f"{package}.app.DEFINITION is named {definition.name!r}; its package says {name_of(package)!r}")
    return definition

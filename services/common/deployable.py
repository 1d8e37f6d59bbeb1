"""What every deployable (the gateway, each service) says about itself to the tools around it.

The runtime names no deployable: each one declares its own name, listening port and the
settings it cannot start without, and everything else (the launcher, `syncmesh up`, the
operator tools, the Kubernetes checks, the benchmark) reads those declarations. A fourth
service then changes its own folder and one registry entry, not a dozen hand-kept lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import Settings

#: The metrics port of whichever deployable a process runs (a container runs one): the setting
#: the Kubernetes manifests give every pod, so one ConfigMap value serves the gateway and every
#: service. `SYNCMESH_<NAME>_METRICS_PORT` wins over it (`syncmesh up` runs all in one process,
#: each on a port of its own).
METRICS_PORT_VARIABLE = "SYNCMESH_METRICS_PORT"

#: What a service needs by default: its stream, its database, and to know test from live.
SERVICE_SETTINGS = ("SYNCMESH_NATS_URL", "SYNCMESH_DATABASE_URL", "SYNCMESH_MODE")


def port_variable(name: str) -> str:
    """`crm-export` -> `SYNCMESH_CRM_EXPORT_PORT`: the variable that moves a deployable's port."""
    return f"SYNCMESH_{name.upper().replace('-', '_')}_PORT"


def metrics_port_variable(name: str) -> str:
    """`crm-export` -> `SYNCMESH_CRM_EXPORT_METRICS_PORT`: where its Prometheus metrics listen."""
    return f"SYNCMESH_{name.upper().replace('-', '_')}_METRICS_PORT"


@dataclass(frozen=True)
class Deployable:
    """A process the mesh runs: its name, its default listening port, the variables it requires."""

    name: str
    default_port: int
    required_settings: tuple[str, ...]

    @property
    def port_variable(self) -> str:
        return port_variable(self.name)

    def port(self, settings: Settings) -> int:
        """The port from `SYNCMESH_<NAME>_PORT` (0: the OS picks), else the declared default."""
        return settings.port_for(self.port_variable, self.default_port)

    @property
    def metrics_port_variable(self) -> str:
        return metrics_port_variable(self.name)

    def metrics_port(self, settings: Settings) -> int | None:
        """The metrics port from `SYNCMESH_<NAME>_METRICS_PORT`, else `SYNCMESH_METRICS_PORT`
        (0: the OS picks); None when both are unset: no metrics server (tests run many services
        in one process)."""
        port = settings.port_overrides.get(self.metrics_port_variable)
        if port is None:
            port = settings.port_overrides.get(METRICS_PORT_VARIABLE)
        return None if port is None else int(port)

    def metrics_port_setting(self, settings: Settings) -> str:
        """The variable the metrics port came from (what an error about it must name)."""
        if self.metrics_port_variable in settings.port_overrides:
            return self.metrics_port_variable
        if METRICS_PORT_VARIABLE in settings.port_overrides:
            return METRICS_PORT_VARIABLE
        return self.metrics_port_variable

    def require(self, settings: Settings) -> Settings:
        """Fail start-up naming every variable this deployable needs and lacks."""
        return settings.require(self.required_settings, to_run=self.name)

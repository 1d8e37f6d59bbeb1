"""The gateway as a deployable: what `syncmesh gateway`, `syncmesh up` and the Kubernetes checks
need to know about it. It is not a service (no database, no consumer), so it is not in
`services/registry.py`; it declares its own facts here, as each service does in its app.py."""

from __future__ import annotations

from services.common.deployable import Deployable

GATEWAY = Deployable(
    name="gateway",
    #: HTTP, where Stripe's webhooks arrive (the services speak gRPC on 5005x).
    default_port=8080,
    required_settings=("SYNCMESH_NATS_URL", "SYNCMESH_WEBHOOK_SECRETS", "SYNCMESH_MODE"),
)

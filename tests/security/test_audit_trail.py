"""The audit trail as data and as domain events (issue 17): each audited call (a change, or a
bulk export of personal data), allowed or refused, is a row of the service's `audit_log` and a
`CallAudited` event on `syncmesh.<service>.call_audited`, written in one transaction through the
outbox. Who is the identity the connection proved (static token, JWT subject), never what the
request says: `changed_by: "CFO"` in a request is nowhere in the trail.

Through the real gRPC servers of the customer service (on localstripe, for the sync to Stripe)
and the CRM export service, a real PostgreSQL, and a real NATS subscription.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import pytest
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc as crm_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc as customer_grpc
from syncmesh.events.v1.audit_pb2 import CallAudited

from services.common.grpc_client import bearer_interceptors
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.crm_export.app import DEFINITION as CRM_EXPORT
from services.customer.app import DEFINITION as CUSTOMER
from tests.conftest import eventually
from tests.customer.support import close_client
from tests.security.jwt_issuer import AUDIENCE, ISSUER, Issuer

OPERATOR_TOKEN = "ops-static-token-0123456789"
CUSTOMER_SVC = "/syncmesh.customer.v1.CustomerService/"
CRM_SVC = "/syncmesh.crm_export.v1.CrmExportService/"


@pytest.fixture
async def services(
    settings: Settings, localstripe: Any, tmp_path: Path
) -> AsyncIterator[tuple[Issuer, dict[str, ServiceRuntime]]]:
    issuer = Issuer()
    tokens = tmp_path / "grpc-tokens"
    tokens.write_text(f"{OPERATOR_TOKEN} ops-ci operator\n")
    configured = settings.with_overrides(
        grpc_tokens_file=str(tokens),
        grpc_jwks_file=str(issuer.write_jwks(tmp_path / "jwks.json", "k1")),
        grpc_jwt_issuer=ISSUER,
        grpc_jwt_audience=AUDIENCE,
    )
    runtimes = {
        "customer": ServiceRuntime(
            CUSTOMER, configured.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=localstripe.url), port=0
        ),
        "crm-export": ServiceRuntime(CRM_EXPORT, configured, port=0),
    }
    try:
        for runtime in runtimes.values():
            await runtime.start()
        for runtime in runtimes.values():
            await runtime.wait_ready(30)
        yield issuer, runtimes
    finally:
        stripe = runtimes["customer"].stripe
        if stripe is not None:
            await close_client(stripe)
        for runtime in runtimes.values():
            await runtime.stop()


async def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    """How a call ends, unary or server-streaming alike."""
    try:
        result = call()
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_each_audited_call_is_stored_and_announced_with_the_proven_identity(
    services: tuple[Issuer, dict[str, ServiceRuntime]], settings: Settings
) -> None:
    issuer, runtimes = services
    received: list[tuple[str, CallAudited]] = []
    nc = await nats.connect(settings.nats_url)

    async def on_event(msg: Any) -> None:
        received.append((msg.subject, CallAudited.FromString(msg.data)))

    await nc.subscribe("syncmesh.*.call_audited", cb=on_event)
    try:
        await _audited_calls_then_check(issuer, runtimes, settings, received)
    finally:
        await nc.close()


async def _audited_calls_then_check(
    issuer: Issuer, runtimes: dict[str, ServiceRuntime], settings: Settings, received: list[tuple[str, CallAudited]]
) -> None:
    alice = issuer.token(subject="alice@example.com", role="operator")
    rita = issuer.token(subject="rita", role="reader")
    bob = issuer.token(subject="bob", role="admin")
    expired = issuer.token(subject="alice@example.com", role="operator", exp=int(time.time()) - 600)

    def customer(token: str | None) -> customer_grpc.CustomerServiceStub:
        return customer_grpc.CustomerServiceStub(channel("customer", token))

    def crm(token: str | None) -> crm_grpc.CrmExportServiceStub:
        return crm_grpc.CrmExportServiceStub(channel("crm-export", token))

    channels: list[grpc.aio.Channel] = []

    def channel(name: str, token: str | None) -> grpc.aio.Channel:
        interceptors = bearer_interceptors(token) if token is not None else None
        made = grpc.aio.insecure_channel(f"127.0.0.1:{runtimes[name].port}", interceptors=interceptors)
        channels.append(made)
        return made

    async def sheet() -> AsyncIterator[customer_pb.ImportCustomerMappingsRequest]:
        yield customer_pb.ImportCustomerMappingsRequest(csv_chunk=b"cus_Audit1,CUST-AUD1,audit1@example.com\n")

    unlink = customer_pb.UnlinkCustomerRequest(erp_customer_id="CUST-AUD1", reason="moved")
    try:
        assert await _code(lambda: customer(OPERATOR_TOKEN).ImportCustomerMappings(sheet())) == grpc.StatusCode.OK
        assert await _code(lambda: customer(None).UnlinkCustomer(unlink)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(lambda: customer(rita).UnlinkCustomer(unlink)) == grpc.StatusCode.PERMISSION_DENIED
        assert await _code(lambda: customer(expired).UnlinkCustomer(unlink)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(lambda: customer(alice).UnlinkCustomer(unlink)) == grpc.StatusCode.OK
        sync = customer_pb.SyncCustomerToStripeRequest(erp_customer_id="CUST-AUD1")
        assert await _code(lambda: customer(alice).SyncCustomerToStripe(sync)) == grpc.StatusCode.OK
        # Reads are not audited.
        assert await _code(lambda: customer(rita).ListCustomers(customer_pb.ListCustomersRequest())) == (
            grpc.StatusCode.OK
        )
        history = await customer(rita).GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(erp_customer_id="CUST-AUD1")
        )

        current = (await crm(rita).GetSettings(crm_pb.GetSettingsRequest())).settings
        claim = crm_pb.UpdateSettingsRequest(settings=current, changed_by="CFO")
        saved = await crm(bob).UpdateSettings(claim)
        assert await _code(lambda: crm(alice).UpdateSettings(claim)) == grpc.StatusCode.PERMISSION_DENIED
        export = crm_pb.ExportSnapshotRequest()
        assert await _code(lambda: crm(rita).ExportSnapshot(export)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for made in channels:
            await made.close()

    # Who did it, in the records the mutations keep themselves: the identity, never the request.
    outcomes = {(entry.action, entry.outcome) for entry in history.entries}
    assert ("unlink", "applied by alice@example.com: moved") in outcomes
    assert ("sync.linked", "applied by alice@example.com") in outcomes
    assert ("import.linked", "applied by ops-ci") in outcomes
    assert saved.settings.changed_by == "bob"

    db = await asyncpg.connect(settings.database_url)
    try:
        trail = {
            schema: [
                dict(r)
                for r in await db.fetch(
                    f"SELECT event_id, method, identity, via, role, outcome, detail, target_field, target_id, "
                    f"called_at, trace_id FROM {schema}.audit_log ORDER BY id"
                )
            ]
            for schema in ("customer", "crm_export")
        }
        announced = {
            schema: {
                r["msg_id"]: r["subject"]
                for r in await db.fetch(
                    f"SELECT msg_id, subject FROM {schema}.outbox WHERE subject LIKE '%call_audited'"
                )
            }
            for schema in ("customer", "crm_export")
        }
    finally:
        await db.close()

    def summary(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        return [
            (r["method"].rsplit("/", 1)[-1], r["identity"], r["via"], r["role"], r["outcome"], r["target_id"])
            for r in rows
        ]

    assert summary(trail["customer"]) == [
        ("ImportCustomerMappings", "ops-ci", "token", "operator", "OK", ""),
        ("UnlinkCustomer", "unauthenticated", "", "", "UNAUTHENTICATED", "CUST-AUD1"),
        ("UnlinkCustomer", "rita", "jwt", "reader", "PERMISSION_DENIED", "CUST-AUD1"),
        ("UnlinkCustomer", "unauthenticated", "", "", "UNAUTHENTICATED", "CUST-AUD1"),
        ("UnlinkCustomer", "alice@example.com", "jwt", "operator", "OK", "CUST-AUD1"),
        ("SyncCustomerToStripe", "alice@example.com", "jwt", "operator", "OK", "CUST-AUD1"),
    ]
    assert summary(trail["crm_export"]) == [
        ("UpdateSettings", "bob", "jwt", "admin", "OK", ""),
        ("UpdateSettings", "alice@example.com", "jwt", "operator", "PERMISSION_DENIED", ""),
        ("ExportSnapshot", "rita", "jwt", "reader", "PERMISSION_DENIED", ""),
    ]
    for schema, rows in trail.items():
        for row in rows:
            assert "CFO" not in str(row)
            assert len(row["trace_id"]) == 32 and row["called_at"] is not None
            assert (row["outcome"] == "OK") == (row["detail"] == ""), row
            # Stored and announced in the same transaction: every record has its event.
            assert announced[schema][row["event_id"]] == f"syncmesh.{schema}.call_audited"
    assert "expired" in trail["customer"][3]["detail"]
    assert "needs operator" in trail["customer"][2]["detail"]

    # ... and every record arrives on NATS as the domain event, with the same identity.
    everyone = {row["event_id"]: (schema, row) for schema, rows in trail.items() for row in rows}

    async def all_arrived() -> bool:
        return {event.meta.event_id for _, event in received} >= set(everyone)

    await eventually(all_arrived, timeout=15)
    assert len(received) == len(everyone)
    for subject, event in received:
        schema, row = everyone[event.meta.event_id]
        assert subject == f"syncmesh.{schema}.call_audited"
        assert event.meta.service == {"customer": "customer", "crm_export": "crm-export"}[schema]
        assert (event.method, event.identity, event.via, event.role, event.outcome) == (
            row["method"],
            row["identity"],
            row["via"],
            row["role"],
            row["outcome"],
        )
        assert (event.target_field, event.target_id, event.trace_id) == (
            row["target_field"],
            row["target_id"],
            row["trace_id"],
        )
        assert event.called_at.ToDatetime().timestamp() == pytest.approx(row["called_at"].timestamp(), abs=1e-3)
        assert "CFO" not in str(event)


async def test_an_audited_call_while_the_database_is_away_is_still_logged(
    services: tuple[Issuer, dict[str, ServiceRuntime]], caplog: pytest.LogCaptureFixture
) -> None:
    """The call's own outcome stands when its record cannot be stored; the log line remains."""
    caplog.set_level(logging.INFO, logger="syncmesh.audit")
    issuer, runtimes = services
    runtime = runtimes["customer"]
    pool, runtime._pool = runtime._pool, None  # as while the service (re)connects to its database
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{runtime.port}", interceptors=bearer_interceptors(issuer.token(role="reader"))
        ) as reader:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await customer_grpc.CustomerServiceStub(reader).UnlinkCustomer(
                    customer_pb.UnlinkCustomerRequest(erp_customer_id="CUST-AWAY")
                )
    finally:
        runtime._pool = pool
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert any(getattr(r, "audit", {}).get("target_id") == "CUST-AWAY" for r in caplog.records)
    assert any("not stored" in r.getMessage() for r in caplog.records)

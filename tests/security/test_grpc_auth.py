"""Identities on gRPC (issue 17): every method but health and reflection needs a known caller,
each service's policy decides by role, refusals are UNAUTHENTICATED or PERMISSION_DENIED, and
every change (allowed or refused) is in the audit trail with who did it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc as customer_grpc

from services import registry
from services.common.auth import Role
from services.common.grpc_client import bearer_interceptors
from services.common.settings import Settings
from tests.security.grpc_mesh import TOKENS, TOKENS_FILE, Mesh, raw_method, running_mesh, service_descriptor


def test_every_rpc_of_every_service_has_an_access_policy() -> None:
    """A new RPC without a decided role fails here (at run time it is refused to everyone)."""
    for definition in registry.definitions():
        methods = {m.name for m in service_descriptor(definition).methods}
        assert set(definition.grpc_policy) == methods, definition.name
        assert all(isinstance(role, Role) for role in definition.grpc_policy.values())


def _write(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "grpc-tokens"
    path.write_text("# token identity role\n" + TOKENS_FILE)
    return path


@pytest.fixture
async def mesh(settings: Settings, tokens_file: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(settings.with_overrides(grpc_tokens_file=str(tokens_file))) as m:
        yield m


async def _code(
    channel: grpc.aio.Channel, path: str, client_streaming: bool, server_streaming: bool
) -> grpc.StatusCode:
    """Call `path` with an empty message; the status code it ends with."""
    call = raw_method(channel, path, client_streaming=client_streaming, server_streaming=server_streaming)
    request: object = iter([b""]) if client_streaming else b""
    try:
        result = call(request, timeout=10)  # type: ignore[operator]
        if server_streaming:
            async for _ in result:
                pass
        else:
            await result
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_each_rpc_refuses_anonymous_and_unknown_callers_and_lets_roles_through(mesh: Mesh) -> None:
    checked = 0
    for name, rt in mesh.runtimes.items():
        address = f"127.0.0.1:{rt.port}"
        for method in mesh.descriptor(name).methods:
            path = f"/{mesh.descriptor(name).full_name}/{method.name}"
            shape = (method.client_streaming, method.server_streaming)
            needed = rt.definition.grpc_policy[method.name]
            async with grpc.aio.insecure_channel(address) as anonymous:
                assert await _code(anonymous, path, *shape) == grpc.StatusCode.UNAUTHENTICATED, path
            async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors("x" * 24)) as stranger:
                assert await _code(stranger, path, *shape) == grpc.StatusCode.UNAUTHENTICATED, path
            for role in Role:
                token = TOKENS[role.name.lower()]
                async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token)) as known:
                    code = await _code(known, path, *shape)
                if role < needed:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (path, role)
                else:
                    assert code not in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.UNKNOWN,
                    ), (path, role, code)
            checked += 1
    assert checked >= 25


async def test_health_and_reflection_need_no_identity(mesh: Mesh) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.runtimes['customer'].port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for answer in answers:
            assert answer.list_services_response.service
            break


async def test_who_unlinked_comes_from_the_identity_and_every_change_is_audited(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"127.0.0.1:{mesh.runtimes['customer'].port}"

    async def unlink(token: str | None) -> grpc.StatusCode:
        interceptors = bearer_interceptors(token) if token else None
        async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
            stub = customer_grpc.CustomerServiceStub(channel)
            try:
                await stub.UnlinkCustomer(customer_pb.UnlinkCustomerRequest(erp_customer_id="CUST-AUD1", reason="x"))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(TOKENS["operator"])) as channel:
        stub = customer_grpc.CustomerServiceStub(channel)

        async def sheet() -> AsyncIterator[customer_pb.ImportCustomerMappingsRequest]:
            yield customer_pb.ImportCustomerMappingsRequest(csv_chunk=b"cus_Audit1,CUST-AUD1\n")

        assert (await stub.ImportCustomerMappings(sheet())).applied

    caplog.set_level(logging.INFO, logger="syncmesh.audit")
    assert await unlink(None) == grpc.StatusCode.UNAUTHENTICATED
    assert await unlink(TOKENS["reader"]) == grpc.StatusCode.PERMISSION_DENIED
    assert await unlink(TOKENS["operator"]) == grpc.StatusCode.OK
    trail = [r.audit for r in caplog.records if hasattr(r, "audit")]  # type: ignore[attr-defined]
    unlinks = [(a["identity"], a["outcome"]) for a in trail if a["method"].endswith("/UnlinkCustomer")]
    assert unlinks == [
        ("unauthenticated", "UNAUTHENTICATED"),
        ("test-reader", "PERMISSION_DENIED"),
        ("test-operator", "OK"),
    ]
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(TOKENS["reader"])) as channel:
        history = await customer_grpc.CustomerServiceStub(channel).GetCustomerHistory(
            customer_pb.GetCustomerHistoryRequest(erp_customer_id="CUST-AUD1")
        )
    assert any("applied by test-operator" in entry.outcome for entry in history.entries)


async def test_a_rotated_token_is_accepted_and_the_old_one_refused_without_a_restart(
    mesh: Mesh, tokens_file: Path
) -> None:
    address = f"127.0.0.1:{mesh.runtimes['billing'].port}"
    path = "/syncmesh.billing.v1.BillingService/ListUnmappedPrices"

    async def code(token: str) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token)) as channel:
            return await _code(channel, path, False, False)

    assert await code(TOKENS["reader"]) == grpc.StatusCode.OK
    _write(tokens_file, "rotated-reader-token-0123456789 test-reader reader\n")
    assert await code(TOKENS["reader"]) == grpc.StatusCode.UNAUTHENTICATED
    assert await code("rotated-reader-token-0123456789") == grpc.StatusCode.OK


async def test_who_changed_the_settings_is_the_caller_whatever_the_request_claims(mesh: Mesh) -> None:
    from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
    from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc as crm_grpc

    address = f"127.0.0.1:{mesh.runtimes['crm-export'].port}"
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(TOKENS["admin"])) as channel:
        stub = crm_grpc.CrmExportServiceStub(channel)
        current = (await stub.GetSettings(crm_pb.GetSettingsRequest())).settings
        saved = await stub.UpdateSettings(
            crm_pb.UpdateSettingsRequest(settings=current, expected_version=current.version, changed_by="CFO")
        )
    assert saved.settings.changed_by == "test-admin"
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(TOKENS["operator"])) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await crm_grpc.CrmExportServiceStub(channel).UpdateSettings(
                crm_pb.UpdateSettingsRequest(settings=current, changed_by="CFO")
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_mesh_clients_present_the_configured_token_blocking_and_async(mesh: Mesh) -> None:
    import asyncio

    from services.common.grpc_client import aio_channel, channel

    address = f"127.0.0.1:{mesh.runtimes['customer'].port}"
    operator = Settings(grpc_token=TOKENS["operator"])

    def dry_run_import() -> bool:  # as `syncmesh import customers --dry-run` calls it (client streaming)
        with channel(operator, address) as blocking:
            requests = iter(
                [customer_pb.ImportCustomerMappingsRequest(csv_chunk=b"cus_Cli1,CUST-CLI1\n", dry_run=True)]
            )
            return bool(customer_grpc.CustomerServiceStub(blocking).ImportCustomerMappings(requests).dry_run)

    assert await asyncio.to_thread(dry_run_import)
    async with aio_channel(operator, address) as async_channel:
        listed = await customer_grpc.CustomerServiceStub(async_channel).ListCustomers(
            customer_pb.ListCustomersRequest()
        )
    assert listed is not None

"""Settings over gRPC: validated, versioned, every change recorded, a bad update changes nothing,
and mapping changes rebuild the clients already synced."""

from __future__ import annotations

import grpc
import pytest
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb

from services.common.service import ServiceRuntime
from tests.conftest import eventually
from tests.crm_export.support import T0, customer, event, publish, stub


def _with(current: pb.CrmExportSettings, **changes: object) -> pb.CrmExportSettings:
    wanted = pb.CrmExportSettings()
    wanted.CopyFrom(current)
    for key, value in changes.items():
        field = getattr(wanted, key)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(wanted, key, value)
    return wanted


async def test_settings_are_validated_versioned_and_recorded(runtime: ServiceRuntime) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        first = (await api.GetSettings(pb.GetSettingsRequest())).settings
        assert first.version == 1 and list(first.contract_sources) == [pb.CONTRACT_SOURCE_INVOICE]
        assert first.customer_sync_direction == pb.CUSTOMER_SYNC_DIRECTION_PULL

        bad_requests = {
            "customer_field_mappings[0].stripe_path": _with(
                first, customer_field_mappings=[pb.FieldMapping(stripe_path="balanse", crm_field="Balance")]
            ),
            "days_back": _with(first, days_back=0),
            "contract_sources": _with(first, contract_sources=[pb.CONTRACT_SOURCE_UNSPECIFIED]),
            "customer_sync_direction": _with(first, customer_sync_direction=pb.CUSTOMER_SYNC_DIRECTION_UNSPECIFIED),
        }
        for field, bad in bad_requests.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.UpdateSettings(pb.UpdateSettingsRequest(settings=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field + ":"), err.value.details()
        assert (await api.GetSettings(pb.GetSettingsRequest())).settings.version == 1  # nothing changed

        second = (
            await api.UpdateSettings(
                pb.UpdateSettingsRequest(
                    settings=_with(
                        first,
                        contract_sources=[pb.CONTRACT_SOURCE_SUBSCRIPTION, pb.CONTRACT_SOURCE_INVOICE],
                        days_back=90,
                        product_field_mappings=[pb.FieldMapping(stripe_path="metadata.sku", crm_field="SKU")],
                    ),
                    expected_version=1,
                    changed_by="ops@example",
                )
            )
        ).settings
        assert second.version == 2 and second.days_back == 90
        assert second.changed_by == "unverified: ops@example"  # authentication off: the claim, marked as such
        assert list(second.contract_sources) == [pb.CONTRACT_SOURCE_INVOICE, pb.CONTRACT_SOURCE_SUBSCRIPTION]

        with pytest.raises(grpc.aio.AioRpcError) as err:  # a writer that read version 1 is refused
            await api.UpdateSettings(pb.UpdateSettingsRequest(settings=first, expected_version=1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        history = (await api.ListSettingsVersions(pb.ListSettingsVersionsRequest())).versions
        assert [v.version for v in history] == [2, 1]
        assert history[1].days_back == first.days_back


async def test_changing_customer_mappings_rebuilds_synced_clients(runtime: ServiceRuntime) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        await publish(runtime.bus, event("customer.created", customer(), created=T0))
        await eventually(lambda: _client_fields(api))
        assert await _client_fields(api) == {"Stripe Balance": "-500"}
        current = (await api.GetSettings(pb.GetSettingsRequest())).settings
        await api.UpdateSettings(
            pb.UpdateSettingsRequest(
                settings=_with(
                    current,
                    customer_field_mappings=[pb.FieldMapping(stripe_path="metadata.segment", crm_field="Segment")],
                )
            )
        )
        assert await _client_fields(api) == {"Segment": "smb"}


async def _client_fields(api) -> dict[str, str] | None:  # type: ignore[no-untyped-def]
    try:
        return dict((await api.GetClient(pb.GetClientRequest(client_id="cus_A"))).client.custom_fields)
    except grpc.aio.AioRpcError:
        return None


async def test_bad_read_arguments_are_refused_with_the_field(runtime: ServiceRuntime) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        for request, field in [
            (pb.ListContractsRequest(start_date="15/06/2025"), "start_date"),
            (pb.ListContractsRequest(start_date="2025-07-01", end_date="2025-06-01"), "end_date"),
            (pb.ListContractsRequest(page_size=5000), "page_size"),
            (pb.ListContractsRequest(page_token="garbage!"), "page_token"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.ListContracts(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field), err.value.details()

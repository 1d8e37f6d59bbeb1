"""A contract's lines read back in the invoice's own line order (not line id order), through real
NATS and PostgreSQL, in both payload shapes."""

from __future__ import annotations

import pytest
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb

from services.common.service import ServiceRuntime
from tests.conftest import eventually
from tests.crm_export.support import T0, customer, event, invoice, publish, stub, view

#: The invoice's line ids in its own order: deliberately not sorted.
ORDER = ["il_zeta", "il_alpha", "il_mid", "il_beta"]


@pytest.mark.parametrize("legacy", [False, True])
async def test_contract_lines_keep_the_invoice_s_line_order(runtime: ServiceRuntime, legacy: bool) -> None:
    inv = invoice("in_ordered", legacy=legacy)
    template = inv["lines"]["data"][0]
    inv["lines"]["data"] = [
        {**template, "id": line_id, "amount": 1000 * (n + 1), "description": f"line {n + 1}"}
        for n, line_id in enumerate(ORDER)
    ]
    await publish(runtime.bus, event("customer.created", customer(), created=T0))
    await publish(runtime.bus, event("invoice.paid", inv, created=T0 + 5))
    channel, api = stub(runtime.port)
    async with channel:
        await eventually(lambda: runtime.consumer.handled >= 2)
        contract = (await api.GetContract(pb.GetContractRequest(contract_id="in_ordered"))).contract
        assert [line.stripe_line_id for line in contract.line_items] == ORDER
        assert [line.description for line in contract.line_items] == ["line 1", "line 2", "line 3", "line 4"]
        listed = (await api.ListContracts(pb.ListContractsRequest())).contracts
        assert [line.stripe_line_id for line in listed[0].line_items] == ORDER
        snapshot = await view(api)
        assert [line.stripe_line_id for line in snapshot["contracts"]["in_ordered"].line_items] == ORDER

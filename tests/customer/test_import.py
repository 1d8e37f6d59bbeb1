"""ImportCustomerMappings over gRPC on the running service, and `syncmesh import customers`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc, events_pb2

from launcher.cli import main as syncmesh_main
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.conftest import eventually
from tests.customer.support import current_customer, customer_event, publish

Stub = customer_service_pb2_grpc.CustomerServiceStub


async def do_import(
    stub: Stub, text: str, *, dry_run: bool = False, chunk: int = 7
) -> pb.ImportCustomerMappingsResponse:
    data = text.encode()

    async def chunks() -> AsyncIterator[pb.ImportCustomerMappingsRequest]:
        for start in range(0, len(data), chunk):  # tiny chunks: rows cross chunk boundaries
            yield pb.ImportCustomerMappingsRequest(dry_run=dry_run, csv_chunk=data[start : start + chunk])

    return await stub.ImportCustomerMappings(chunks())


async def snapshot(settings: Settings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        customers = await conn.fetch("SELECT * FROM customer.customers ORDER BY erp_customer_id")
        history = await conn.fetch("SELECT * FROM customer.customer_history ORDER BY id")
        outbox = await conn.fetch("SELECT id FROM customer.outbox ORDER BY id")
        return [*customers, *history, *outbox]
    finally:
        await conn.close()


async def linked_customer(runtime: ServiceRuntime, stub: Stub, **fields: object) -> pb.Customer:
    obj = current_customer(**fields)
    await publish(runtime.bus, customer_event("customer.created", obj, created=1_700_000_000))

    async def got() -> pb.Customer | None:
        try:
            return (await stub.GetCustomer(pb.GetCustomerRequest(stripe_customer_id=obj["id"]))).customer
        except grpc.aio.AioRpcError:
            return None

    return await eventually(got)


async def test_good_sheet_is_applied_in_one_go(runtime: ServiceRuntime, stub: Stub, settings: Settings) -> None:
    unlinked = await linked_customer(runtime, stub)
    await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id=unlinked.erp_customer_id, reason="test"))
    already = await linked_customer(runtime, stub)
    sheet = (
        "stripe_customer_id,erp_customer_id,email\n"
        "cus_NoEmail01,NS-1001,\n"  # a customer without an email: linked through the sheet
        "cus_WithMail02,CUST-000050,Import@Example.com\n"
        f"cus_Relink03,{unlinked.erp_customer_id},\n"
        f"{already.stripe_customer_id},{already.erp_customer_id},\n"
    )
    response = await do_import(stub, sheet)
    assert response.applied and not response.problems
    assert (response.rows, response.created, response.linked, response.unchanged) == (4, 2, 1, 1)

    no_email = await stub.FindCustomer(pb.FindCustomerRequest(stripe_customer_id="cus_NoEmail01"))
    assert no_email.customer.erp_customer_id == "NS-1001" and no_email.customer.email == ""
    by_email = await stub.FindCustomer(pb.FindCustomerRequest(email="import@example.com"))
    assert by_email.customer.erp_customer_id == "CUST-000050"
    relinked = await stub.GetCustomer(pb.GetCustomerRequest(erp_customer_id=unlinked.erp_customer_id))
    assert relinked.customer.stripe_customer_id == "cus_Relink03"
    history = await stub.GetCustomerHistory(pb.GetCustomerHistoryRequest(erp_customer_id="NS-1001"))
    assert [e.action for e in history.entries] == ["import.linked"]

    # Ids assigned afterwards never collide with an imported CUST-… id.
    fresh = await linked_customer(runtime, stub)
    assert fresh.erp_customer_id == "CUST-000051"

    # Events for an imported customer fill in its record.
    await publish(
        runtime.bus,
        customer_event("customer.updated", current_customer("cus_NoEmail01", name="Filled In"), created=1_700_000_001),
    )

    async def filled() -> bool:
        got = await stub.GetCustomer(pb.GetCustomerRequest(erp_customer_id="NS-1001"))
        return got.customer.name == "Filled In"

    await eventually(filled)

    links = await eventually(lambda: _events(runtime, "syncmesh.customer.customer_linked"))
    assert links.source in (events_pb2.LINK_SOURCE_IMPORT, events_pb2.LINK_SOURCE_STRIPE_EVENT)


async def _events(runtime: ServiceRuntime, subject: str) -> events_pb2.CustomerLinked | None:
    from services.common.bus import EVENTS_STREAM

    try:
        msg = await runtime.bus.js.get_msg(EVENTS_STREAM, subject=subject)
    except Exception:
        return None
    return events_pb2.CustomerLinked.FromString(msg.data)


async def test_one_bad_row_refuses_the_whole_sheet(runtime: ServiceRuntime, stub: Stub, settings: Settings) -> None:
    before = await snapshot(settings)
    response = await do_import(stub, "cus_Good0001,NS-1\ncus_Good0002,NS-2\nnot-a-stripe-id,NS-3\ncus_Good0004,NS-1\n")
    assert not response.applied
    assert [(p.line, p.field) for p in response.problems] == [(3, "stripe_customer_id"), (4, "erp_customer_id")]
    assert "line 1" in response.problems[1].reason
    assert await snapshot(settings) == before


async def test_conflicts_with_existing_links_refuse_the_sheet(
    runtime: ServiceRuntime, stub: Stub, settings: Settings
) -> None:
    held = await linked_customer(runtime, stub)
    before = await snapshot(settings)
    response = await do_import(
        stub,
        f"cus_Fine00001,NS-9\n{held.stripe_customer_id},NS-10\ncus_Other0003,{held.erp_customer_id}\n",
    )
    assert not response.applied and response.problem_count == 2
    reasons = {p.line: p.reason for p in response.problems}
    assert held.erp_customer_id in reasons[2]  # the Stripe customer is already someone's
    assert "unlink" in reasons[3].lower() or "clear the link" in reasons[3]  # re-linking needs unlink first
    assert await snapshot(settings) == before
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCustomer(pb.GetCustomerRequest(erp_customer_id="NS-9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # After clearing the link, the same ERP customer can be linked to another Stripe customer.
    await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id=held.erp_customer_id))
    response = await do_import(stub, f"cus_Other0003,{held.erp_customer_id}\n")
    assert response.applied and response.linked == 1


async def test_dry_run_reports_and_writes_nothing(runtime: ServiceRuntime, stub: Stub, settings: Settings) -> None:
    before = await snapshot(settings)
    response = await do_import(stub, "cus_Dry000001,NS-1\ncus_Dry000002,NS-2\n", dry_run=True)
    assert response.dry_run and not response.applied and response.created == 2
    assert await snapshot(settings) == before


async def test_empty_or_binary_upload_is_invalid_argument(stub: Stub) -> None:
    for text in ("", "\n\n"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await do_import(stub, text)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "csv_chunk" in err.value.details()

    async def binary() -> AsyncIterator[pb.ImportCustomerMappingsRequest]:
        yield pb.ImportCustomerMappingsRequest(csv_chunk=b"\xff\xfe\x00bad")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportCustomerMappings(binary())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.value.details()


@pytest.mark.slow
async def test_hundred_thousand_rows_through_the_cli(
    runtime: ServiceRuntime,
    stub: Stub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.common import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.1)  # stderr is not a terminal here: lines
    path = tmp_path / "customers.csv"
    rows = 100_000
    lines = ["stripe_customer_id,erp_customer_id,email"]
    lines += [f"cus_bulk{i:09d},NS-{i:07d},user{i}@example.com" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    target = f"127.0.0.1:{runtime.port}"

    code = await asyncio.to_thread(syncmesh_main, ["import", "customers", str(path), "--dry-run", "--target", target])
    out = capsys.readouterr()
    assert code == 0 and "would create 100000" in out.out and "nothing written" in out.out

    started = time.perf_counter()
    code = await asyncio.to_thread(syncmesh_main, ["import", "customers", str(path), "--target", target])
    elapsed = time.perf_counter() - started
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "created 100000" in out.out
    assert "uploading customers.csv" in out.err  # the progress bar
    # after the upload, the service's own steps, with rows: never a bar stuck at 100 %
    assert out.err.index("uploading customers.csv") < out.err.index("service: ")
    assert re.search(r"service: copying rows \(2/6\): [\d,]+/100000 rows", out.err), out.err[-2000:]
    assert "service: committing (6/6)" in out.err or "service: queueing events (5/6)" in out.err, out.err[-2000:]
    print(f"\n100,000-row import through the CLI: {elapsed:.1f} s")
    last = await stub.GetCustomer(pb.GetCustomerRequest(stripe_customer_id=f"cus_bulk{rows - 1:09d}"))
    assert last.customer.erp_customer_id == f"NS-{rows - 1:07d}"
    page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=500))
    assert len(page.customers) == 500 and page.next_page_token


async def test_cli_prints_problems_and_fails(
    runtime: ServiceRuntime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("cus_Fine00001,NS-1\ncus_Fine00001,NS-2\n")
    code = await asyncio.to_thread(
        syncmesh_main, ["import", "customers", str(path), "--target", f"127.0.0.1:{runtime.port}"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "line 2: stripe_customer_id: cus_Fine00001 also appears on line 1" in err
    assert "nothing was written" in err


async def test_the_streamed_import_reports_each_step_and_keeps_talking_while_one_runs_long(
    stub: Stub, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's bar must not sit still while the service writes: a step per message, the
    rows copied, and the last step repeated while a statement runs long; then the result."""
    from services.customer import api, store

    monkeypatch.setattr(api, "PROGRESS_HEARTBEAT_SECONDS", 0.2)
    real_import = store.import_mappings

    async def slow_import(conn, rows, *, apply, step, **kwargs):  # type: ignore[no-untyped-def]
        outcome = await real_import(conn, rows, apply=apply, step=step, **kwargs)
        await asyncio.sleep(1.0)  # a long statement in "writing customers"
        return outcome

    monkeypatch.setattr(store, "import_mappings", slow_import)
    text = "stripe_customer_id,erp_customer_id\n" + "".join(f"cus_step{i:04d},STEP-{i:04d}\n" for i in range(25))
    data = text.encode()

    async def chunks() -> AsyncIterator[pb.ImportCustomerMappingsWithProgressRequest]:
        for start in range(0, len(data), 100):
            yield pb.ImportCustomerMappingsWithProgressRequest(csv_chunk=data[start : start + 100])

    seen = [m async for m in stub.ImportCustomerMappingsWithProgress(chunks())]
    steps = [m.step for m in seen]
    assert steps[0] == "reading the file" and steps[-1] == "done", steps
    assert [s for s in dict.fromkeys(steps)] == [*store.IMPORT_STEPS, "done"], steps
    assert steps.count("writing customers") >= 3, steps  # repeated while the slow step ran
    copied = [m.rows_done for m in seen if m.step == "copying rows"]
    assert copied[-1] == 25 and all(m.rows == 25 and m.steps == 6 for m in seen[1:]), seen
    assert seen[-1].HasField("result") and seen[-1].result.created == 25 and seen[-1].result.applied
    assert not any(m.HasField("result") for m in seen[:-1])


async def test_a_refused_streamed_import_ends_with_its_problems(stub: Stub) -> None:
    async def chunks() -> AsyncIterator[pb.ImportCustomerMappingsWithProgressRequest]:
        yield pb.ImportCustomerMappingsWithProgressRequest(csv_chunk=b"stripe_customer_id,erp_customer_id\nnope,X-1\n")

    seen = [m async for m in stub.ImportCustomerMappingsWithProgress(chunks())]
    assert seen[-1].result.problem_count == 1 and not seen[-1].result.applied
    with pytest.raises(grpc.aio.AioRpcError) as refused:

        async def empty() -> AsyncIterator[pb.ImportCustomerMappingsWithProgressRequest]:
            yield pb.ImportCustomerMappingsWithProgressRequest()

        _ = [m async for m in stub.ImportCustomerMappingsWithProgress(empty())]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

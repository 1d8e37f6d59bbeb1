"""`syncmesh import customers FILE.csv [--dry-run]`: the customer ID-mapping data sheet.

The file is streamed to the service in chunks over the client-streaming
ImportCustomerMappings RPC rather than sent whole: a sheet of a few hundred thousand rows is
tens of MB, beyond gRPC's default 4 MB message limit (and proxies' limits) between here and a
service in Kubernetes, and chunks let the progress bar show real upload progress. Nothing is
applied until the last chunk has arrived: the service then checks every row and writes all or
nothing in one transaction, so streaming does not weaken the all-or-nothing rule.

The service streams back what it does with the file after the upload (ImportCustomerMappings-
WithProgress: reading, copying rows, checking links, writing, committing), shown as a second
bar, so a large sheet never sits at "100 %" while the service works. A service too old for that
RPC gets the plain one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common.grpc_client import Listening, default_target
from services.common.grpc_client import channel as client_channel
from services.common.progress import Progress, progress
from services.common.settings import load_settings

CHUNK_BYTES = 512 * 1024


def register(sub: Any, groups: dict[str, Any]) -> None:
    parser = groups["import"].add_parser(
        "customers",
        help="import a stripe_customer_id,erp_customer_id[,email] mapping sheet (all or nothing)",
        description=(
            "Link existing Stripe customers to ERP customers from a CSV sheet with the columns "
            "stripe_customer_id,erp_customer_id[,email] (header line optional). Every row is checked "
            "first; any bad row fails the whole import and nothing is written."
        ),
    )
    parser.add_argument("file", type=Path, help="the CSV file (UTF-8)")
    parser.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    parser.add_argument("--target", default=None, help="customer service gRPC address (default 127.0.0.1:<port>)")
    parser.set_defaults(func=import_customers)


def _chunks(path: Path, dry_run: bool, bar: Progress, message: Any = pb.ImportCustomerMappingsRequest) -> Iterator[Any]:
    """The file in `message`s (the plain RPC's or the streaming one's: the same two fields)."""
    with path.open("rb") as handle:
        first = True
        while True:
            chunk = handle.read(CHUNK_BYTES)
            if not chunk and not first:
                return
            yield message(dry_run=dry_run, csv_chunk=chunk)
            bar.update(len(chunk))
            first = False
            if not chunk:
                return


def import_customers(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not path.is_file():
        print(f"syncmesh: {path} is not a file", file=sys.stderr)
        return 2
    settings = load_settings()
    target = args.target or default_target(settings, _definition())
    with client_channel(settings, target) as channel:
        stub = customer_service_pb2_grpc.CustomerServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            response = _with_progress(stub, path, args.dry_run)
            if response is None:  # a service without the streaming RPC
                response = _plain(stub, path, args.dry_run)
        except KeyboardInterrupt:
            print(
                "\nsyncmesh: import interrupted: the service rolls it back (all or nothing) unless it was committing",
                file=sys.stderr,
            )
            return 130
        except grpc.RpcError as exc:
            print(f"\nsyncmesh: import failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return report(response)


def _upload_bar(path: Path) -> Progress:
    return progress(total=path.stat().st_size, desc=f"uploading {path.name}", unit="B")


def _with_progress(stub: Any, path: Path, dry_run: bool) -> pb.ImportCustomerMappingsResponse | None:
    """The streaming import: the upload's bar, then the service's steps with rows done."""
    upload = _upload_bar(path)
    server: Progress | None = None
    call = stub.ImportCustomerMappingsWithProgress(
        _chunks(path, dry_run, upload, pb.ImportCustomerMappingsWithProgressRequest)
    )
    result: pb.ImportCustomerMappingsResponse | None = None
    try:
        # Read to the stream's end, not just to the result: the call ends (and the service
        # records it in its audit trail) only after the last message.
        for message in call:
            if server is None:
                upload.close()
                server = progress(total=message.rows or None, desc="service", unit="rows")
            if message.HasField("result"):
                server.update(max(0, message.rows_done - server.n))
                result = message.result
                continue
            # rows done count up while rows are copied; the steps after work on all rows at once
            total = message.rows if message.step == "copying rows" and message.rows else None
            if server.total != total:
                server.total = total
            server.set_description(f"service: {message.step} ({message.step_number}/{message.steps})", refresh=False)
            delta = message.rows_done - server.n
            if delta > 0:
                server.update(delta)
            else:
                server.refresh()  # a step that runs long: the service says it is still at it
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED and server is None:
            return None
        raise
    except BaseException:
        call.cancel()
        raise
    finally:
        upload.close()
        if server is not None:
            server.close()
    if result is not None:
        return result
    raise grpc.RpcError("the service ended the import without a result")


def _plain(stub: Any, path: Path, dry_run: bool) -> pb.ImportCustomerMappingsResponse:
    with _upload_bar(path) as bar:
        response: pb.ImportCustomerMappingsResponse = stub.ImportCustomerMappings(_chunks(path, dry_run, bar))
    return response


def report(response: pb.ImportCustomerMappingsResponse) -> int:
    if response.problem_count:
        print(
            f"import refused: {response.problem_count} problem(s) in {response.rows} row(s); nothing was written",
            file=sys.stderr,
        )
        for problem in response.problems:
            print(f"  line {problem.line}: {problem.field}: {problem.reason}", file=sys.stderr)
        if response.problem_count > len(response.problems):
            print(f"  … and {response.problem_count - len(response.problems)} more", file=sys.stderr)
        return 1
    verb = "would create" if response.dry_run else "created"
    print(
        f"{response.rows} row(s): {verb} {response.created} customer(s), "
        f"{'would link' if response.dry_run else 'linked'} {response.linked} existing, "
        f"{response.unchanged} already in place" + (" (dry run: nothing written)" if response.dry_run else "")
    )
    return 0


def _definition() -> Listening:
    """This service's definition, imported only when a command runs (it loads the handlers)."""
    from services.customer.app import DEFINITION

    return DEFINITION

"""8. Side by side with the peer: `@supabase/stripe-sync-engine` and the mesh, one window, one stream.

What a team would pick instead of the mesh to get Stripe events into PostgreSQL is the peer: one
Node process that verifies each webhook and upserts the object's row before it answers. This
section installs it from npm itself (pinned, cached under the ignored `build/peer/`), gives it a
throw-away PostgreSQL of its own (the same embedded server and settings as the mesh's:
synchronous commit on), runs its migrations and a ~60-line `node:http` route around
`processWebhook` (`bench/peer_node/server.cjs`), and then drives the same signed event stream
(`bench/peer_events.py`: customer, product, price, invoice and charge events, signed with the
official stripe SDK) at concurrency 1 and 32 into the peer and into the mesh's gateway,
interleaved (peer, mesh, mesh, peer, ...), each run on a fresh stream.

- Peer: events/s is 2xx answers over the sender's wall time (a 2xx means the row is committed);
  afterwards its tables must hold exactly the rows and final states the stream implies.
- Mesh: events/s is the stream's events over the time until every service has consumed all of
  them (consumer info: nothing pending, nothing awaiting an ack), the mesh's end to end; then
  every service's idempotency record must hold exactly the run's events it subscribes to, and the
  customer and billing records the rows and final states the stream implies.
- Latency is per request, send to answer (closed loop: `c` requests in flight at a time); for
  the mesh that is the gateway's durable ack, not the services' commit.
- CPU per event of every process (utime + stime from /proc): the peer's node process and its
  PostgreSQL; the mesh's gateway, each service, nats-server and its PostgreSQL; the sender (this
  process) apart. Unlike events/s it hardly moves when others share the cores.

The way to run the peer (its npm names, the CommonJS migration entry, the `postgres` role its
migrations need, the loopback-pinned Stripe client) comes from the peer harness written for
issue 20 (peers/stripe-sync-engine: README, run.sh, server.cjs, gen_events.py, loadgen.py); its
ideas are adapted here, and nothing of it is read at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from bench.consumer import subject_matches
from bench.env import ROOT, definition
from bench.events import BENCH_SECRET, sign
from bench.peer_events import Stream, stream
from bench.procs import TICK, cpu_jiffies, tree_jiffies
from bench.stats import fmt, percentile
from bench.suite import Mesh, Suite
from services.common.embedded import PostgresServer, free_port
from services.common.events import subject_for

TITLE = "8. Side by side with the peer (@supabase/stripe-sync-engine)"

PEER_PACKAGE = "@supabase/stripe-sync-engine"
PEER_VERSION = "0.48.5"
#: The peer's peer dependency (`stripe` > 18); the version the harness measured with.
STRIPE_NODE_VERSION = "23.1.0"
CACHE = ROOT / "build" / "peer" / f"stripe-sync-engine-{PEER_VERSION}-stripe-{STRIPE_NODE_VERSION}"
NODE_FILES = Path(__file__).resolve().parent / "peer_node"
PEER_TABLES = "stripe.customers, stripe.products, stripe.prices, stripe.invoices, stripe.charges"
CONCURRENCIES = (1, 32)


# -- installing and running the peer -----------------------------------------------------------


def install() -> tuple[Path | None, str]:
    """The peer installed in the cache folder (npm, once), or None and one line saying why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, "node and npm are not on the PATH"
    marker = CACHE / "node_modules" / "@supabase" / "stripe-sync-engine" / "package.json"
    if not marker.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "package.json").write_text('{"name": "syncmesh-bench-peer", "private": true}\n')
        try:
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    # An unreachable registry should say so within a minute, not after npm's own retries.
                    "--fetch-retries=1",
                    "--fetch-timeout=20000",
                    f"{PEER_PACKAGE}@{PEER_VERSION}",
                    f"stripe@{STRIPE_NODE_VERSION}",
                ],
                cwd=CACHE,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            return None, "npm install did not finish within 5 minutes (is the npm registry reachable?)"
        if done.returncode != 0 or not marker.exists():
            lines = [ln for ln in done.stderr.strip().splitlines() if "complete log" not in ln] or ["no output"]
            last = " / ".join(ln.removeprefix("npm error ").strip() for ln in lines[:2])[:200]
            return None, f"npm install {PEER_PACKAGE}@{PEER_VERSION} failed (npm registry unreachable?): {last}"
    for name in ("server.cjs", "migrate.cjs"):
        shutil.copyfile(NODE_FILES / name, CACHE / name)
    return CACHE, ""


class Peer:
    """The peer's Node process and its own PostgreSQL, started and stopped together."""

    def __init__(self, folder: Path, data_dir: Path) -> None:
        self.folder = folder
        self.data_dir = data_dir
        self.pg = PostgresServer(data_dir / "pg")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = data_dir / "peer-node.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCMESH_", "OTEL_", "NODE_"))}
        env.update(DATABASE_URL=self.pg.dsn("postgres"), **extra)
        return env

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.pg.start)
        migrated = await asyncio.to_thread(
            subprocess.run,
            ["node", "migrate.cjs"],
            cwd=self.folder,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"the peer's migrations failed: {migrated.stderr.strip()[-500:]}")
        self.port = free_port()
        self.process = self._spawn()
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the peer exited: {self.log_path.read_text(errors='replace')[-800:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"http://127.0.0.1:{self.port}/stats") as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError("the peer did not answer within 30 s")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                ["node", "server.cjs"],
                cwd=self.folder,
                env=self._env(WEBHOOK_SECRET=BENCH_SECRET, PORT=str(self.port)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    async def stats(self) -> dict[str, object]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/stats") as answer,
        ):
            data: dict[str, object] = await answer.json()
            return data

    def cpu(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.process is not None:
            out["peer node"] = cpu_jiffies(self.process.pid, children=False)
        if self.pg.process is not None:
            out["peer postgresql"] = tree_jiffies(self.pg.process.pid)
        return out

    async def truncate(self) -> None:
        conn = await asyncpg.connect(self.pg.dsn("postgres"))
        try:
            await conn.execute(f"TRUNCATE {PEER_TABLES} CASCADE")
        finally:
            await conn.close()

    async def verify(self, run: Stream) -> tuple[bool, str]:
        """Exactly the rows and final states the stream implies (the harness's verify.cjs)."""
        like = f"%\\_{run.tag}%"
        queries = {
            "customers": "SELECT count(*) FROM stripe.customers WHERE id LIKE $1",
            "customers_updated": "SELECT count(*) FROM stripe.customers WHERE id LIKE $1 AND phone IS NOT NULL "
            "AND metadata->>'tier' IS NOT NULL",
            "products": "SELECT count(*) FROM stripe.products WHERE id LIKE $1",
            "prices": "SELECT count(*) FROM stripe.prices WHERE id LIKE $1",
            "invoices": "SELECT count(*) FROM stripe.invoices WHERE id LIKE $1",
            "invoices_paid": "SELECT count(*) FROM stripe.invoices WHERE id LIKE $1 AND status = 'paid'",
            "charges": "SELECT count(*) FROM stripe.charges WHERE id LIKE $1",
            "charges_refunded": "SELECT count(*) FROM stripe.charges WHERE id LIKE $1 AND refunded",
        }
        conn = await asyncpg.connect(self.pg.dsn("postgres"))
        try:
            got = {key: int(await conn.fetchval(sql, like)) for key, sql in queries.items()}
        finally:
            await conn.close()
        wrong = {k: (got[k], run.expected[k]) for k in run.expected if got.get(k) != run.expected[k]}
        if wrong:
            return False, "rows MISMATCH (got, expected): " + json.dumps(wrong)
        return True, "rows ok (" + ", ".join(f"{k} {v}" for k, v in got.items()) + ")"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.pg.stop()


# -- driving a stream --------------------------------------------------------------------------


@dataclass
class Drive:
    """What the sender saw: answers by status, latencies of the 2xx, wall time."""

    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = math.nan
    errors: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


async def drive(url: str, bodies: list[bytes], concurrency: int) -> Drive:
    """Closed loop: `concurrency` senders, each posting the stream's next body once answered.

    Every body is signed up front with the official SDK (its cost is the sender's, not the
    server's); a non-2xx is counted, never retried, so the verification afterwards catches it.
    """
    now = int(time.time())
    signed = [(body, sign(body, BENCH_SECRET, timestamp=now)) for body in bodies]
    result = Drive()
    position = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def sender() -> None:
            nonlocal position
            while position < len(signed):
                body, signature = signed[position]
                position += 1
                began = time.perf_counter()
                headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
                try:
                    async with session.post(url, data=body, headers=headers) as answer:
                        text = await answer.read()
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, text = 0, type(exc).__name__.encode()
                result.statuses[status] += 1
                if 200 <= status < 300:
                    result.ok += 1
                    result.latencies_ms.append((time.perf_counter() - began) * 1000)
                elif len(result.errors) < 3:
                    result.errors.append(f"{status}: {text[:120].decode(errors='replace')}")

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - began
    return result


# -- one run of each -----------------------------------------------------------------------------


@dataclass
class Run:
    system: str
    concurrency: int
    events: int
    rate: float
    p50: float
    p99: float
    verified: bool
    detail: str
    #: CPU per event in ms, by process.
    cpu_ms: dict[str, float]

    @property
    def cpu_total(self) -> float:
        return sum(ms for name, ms in self.cpu_ms.items() if not name.startswith("bench"))

    def describe(self) -> str:
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in self.cpu_ms.items())
        return (
            f"{self.system} c={self.concurrency}: {self.events} events, {fmt(self.rate)}/s, p50 {fmt(self.p50)} ms, "
            f"p99 {fmt(self.p99)} ms; CPU ms per event: {parts} (total without the sender "
            f"{self.cpu_total:.2f}); {self.detail}"
        )


def per_event(before: dict[str, int], after: dict[str, int], events: int) -> dict[str, float]:
    out = {}
    for name, jiffies in before.items():
        if name in after and after[name] >= jiffies and events:
            out[name.split(" (pid")[0]] = (after[name] - jiffies) * 1000 / TICK / events
    return out


async def run_peer(suite: Suite, peer: Peer, run: Stream, concurrency: int) -> Run:
    await peer.truncate()
    sender = {"bench (sender)": cpu_jiffies(os.getpid(), children=False)}
    before = {**peer.cpu(), **sender}
    result = await drive(peer.url, run.bodies, concurrency)
    after = {**peer.cpu(), "bench (sender)": cpu_jiffies(os.getpid(), children=False)}
    verified, detail = await peer.verify(run)
    if result.failed:
        verified = False
        detail += f"; {result.failed} non-2xx ({'; '.join(result.errors)})"
    return Run(
        "peer",
        concurrency,
        len(run.bodies),
        result.ok / result.seconds,
        result.p50,
        result.p99,
        verified,
        detail,
        per_event(before, after, len(run.bodies)),
    )


def _subscribed(mesh: Mesh, run: Stream) -> dict[str, list[str]]:
    """Per service schema: the run's distinct event ids that service subscribes to."""
    out: dict[str, list[str]] = {}
    for name in mesh.services:
        spec = definition(name)
        ids = {
            eid
            for eid, etype in zip(run.ids, run.types, strict=True)
            if any(subject_matches(p, subject_for(etype)) for p in spec.subjects)
        }
        out[spec.schema] = sorted(ids)
    return out


async def _mesh_drained(suite: Suite, mesh: Mesh, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    durables = [definition(name).name for name in mesh.services]
    while time.monotonic() < deadline:
        infos = [await suite.env.consumer_info(d) for d in durables]
        if all(i is not None and i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
            return True
        await asyncio.sleep(0.005)
    return False


async def verify_mesh(suite: Suite, mesh: Mesh, run: Stream) -> tuple[bool, str]:
    """Every service committed exactly the run's events it subscribes to, and the customer and
    billing records hold the rows and final states the stream implies."""
    conn = await asyncpg.connect(suite.env.pg.dsn(mesh.database))
    problems: list[str] = []
    seen: list[str] = []
    try:
        for schema, ids in _subscribed(mesh, run).items():
            sql = f"SELECT count(*) FROM {schema}.processed_events WHERE event_id = ANY($1)"
            got = int(await conn.fetchval(sql, ids))
            seen.append(f"{schema} {got}/{len(ids)} events")
            if got != len(ids):
                problems.append(f"{schema} committed {got} of {len(ids)} events")
        like = f"%\\_{run.tag}%"
        checks = {
            ("customer", "customers"): "SELECT count(*) FROM customer.customers WHERE stripe_customer_id LIKE $1",
            ("customer", "customers_updated"): "SELECT count(*) FROM customer.customers "
            "WHERE stripe_customer_id LIKE $1 AND phone IS NOT NULL",
            ("billing", "invoices"): "SELECT count(*) FROM billing.invoices WHERE stripe_invoice_id LIKE $1",
            ("billing", "invoices_paid"): "SELECT count(*) FROM billing.invoices "
            "WHERE stripe_invoice_id LIKE $1 AND stripe_status = 'paid'",
        }
        schemas = {definition(name).schema for name in mesh.services}
        for (schema, key), sql in checks.items():
            if schema not in schemas:
                continue
            got = int(await conn.fetchval(sql, like))
            seen.append(f"{key} {got}")
            if got != run.expected[key]:
                problems.append(f"{schema}: {key} {got}, expected {run.expected[key]}")
    finally:
        await conn.close()
    if problems:
        return False, "records MISMATCH: " + "; ".join(problems)
    return True, "records ok (" + ", ".join(seen) + ")"


async def run_mesh(suite: Suite, mesh: Mesh, run: Stream, concurrency: int) -> Run:
    await suite.mesh_idle(TITLE)
    before = suite.process_cpu()
    began = time.perf_counter()
    result = await drive(mesh.url, run.bodies, concurrency)
    drained = await _mesh_drained(suite, mesh, timeout=120)
    seconds = time.perf_counter() - began
    after = suite.process_cpu()
    mesh.webhooks_sent += len(run.bodies)
    verified, detail = await verify_mesh(suite, mesh, run)
    if not drained:
        verified, detail = False, "not consumed by every service within 120 s; " + detail
    if result.failed:
        verified = False
        detail += f"; {result.failed} non-2xx ({'; '.join(result.errors)})"
    detail += f"; gateway answered all in {result.seconds:.2f} s ({fmt(result.ok / result.seconds)}/s)"
    cpu = per_event(before, after, len(run.bodies))
    cpu = {("bench (sender)" if name.startswith("bench") else name): ms for name, ms in cpu.items()}
    return Run(
        "mesh", concurrency, len(run.bodies), len(run.bodies) / seconds, result.p50, result.p99, verified, detail, cpu
    )


# -- the section ---------------------------------------------------------------------------------


async def run(suite: Suite) -> None:
    folder, why = await asyncio.to_thread(install)
    if folder is None:
        suite.skip(TITLE, f"the peer cannot be installed: {why}")
        return
    services = suite.ready_services()
    if not services:
        suite.skip(TITLE, "no service can be loaded (see section 3)")
        return
    count = int(suite.config.pick(5000, 1000))
    peer = Peer(folder, suite.env.data_dir / "peer")
    figures = {}
    for c in CONCURRENCIES:
        figures[c] = {
            "peer": suite.figure(
                TITLE, f"peer.rate@{c}", f"peer events/s, concurrency {c} (rows verified)", "events/s"
            ),
            "mesh": suite.figure(
                TITLE, f"peer.mesh@{c}", f"mesh end to end events/s, concurrency {c} (records verified)", "events/s"
            ),
            "ratio": suite.figure(
                TITLE, f"peer.ratio@{c}", f"mesh / peer events/s, concurrency {c}", "x", target=1.0, direction="min"
            ),
            "peer_p99": suite.figure(TITLE, f"peer.p99@{c}", f"peer p99, concurrency {c}", "ms"),
            "mesh_p99": suite.figure(TITLE, f"peer.mesh_p99@{c}", f"mesh gateway 2xx p99, concurrency {c}", "ms"),
            "peer_cpu": suite.figure(
                TITLE, f"peer.cpu@{c}", f"peer CPU per event (node + its PostgreSQL), concurrency {c}", "ms"
            ),
            "mesh_cpu": suite.figure(
                TITLE,
                f"peer.mesh_cpu@{c}",
                f"mesh CPU per event (all its processes), concurrency {c}",
                "ms",
                target=1.2 if c > 1 else 2.5,
            ),
        }
    try:
        suite.say(f"  starting the peer ({PEER_PACKAGE}@{PEER_VERSION}, node, its own PostgreSQL)")
        await peer.start()
        mesh = await suite.start_mesh()
        base = int(time.time()) - 2 * 86400
        suite.say("  warming up both (300 events each at concurrency 8)")
        warm = stream(300, suite.tag(), 7, base)
        await drive(peer.url, warm.bodies, 8)
        await drive(mesh.url, warm.bodies, 8)
        await _mesh_drained(suite, mesh, timeout=60)
        async with suite.measuring(TITLE):
            for run_no in suite.runs():
                if not suite.another_run(TITLE, run_no):
                    break
                for c in CONCURRENCIES:
                    tag = suite.tag()
                    events = stream(count, tag, 100 * run_no + c, base)
                    order = ("peer", "mesh") if run_no % 2 == 0 else ("mesh", "peer")
                    done: dict[str, Run] = {}
                    for system in order:
                        suite.say(f"  run {run_no + 1}: {system}, {len(events.bodies):,} events at concurrency {c}")
                        if system == "peer":
                            done[system] = await run_peer(suite, peer, events, c)
                        else:
                            done[system] = await run_mesh(suite, mesh, events, c)
                        suite.say(f"    {done[system].describe()}")
                    p, m = done["peer"], done["mesh"]
                    fig = figures[c]
                    if p.verified:
                        suite.record(fig["peer"], p.rate)
                        suite.record(fig["peer_p99"], p.p99)
                        suite.record(fig["peer_cpu"], p.cpu_total)
                    if m.verified:
                        suite.record(fig["mesh"], m.rate)
                        suite.record(fig["mesh_p99"], m.p99)
                        suite.record(fig["mesh_cpu"], m.cpu_total)
                    if p.verified and m.verified:
                        suite.record(fig["ratio"], m.rate / p.rate)
                    fig["ratio"].notes.append(f"run {run_no + 1}: {p.describe()}")
                    fig["ratio"].notes.append(f"run {run_no + 1}: {m.describe()}")
        stats = await peer.stats()
        suite.note(
            TITLE,
            f"peer server counters: {stats.get('ok')} ok, {stats.get('failed')} failed, "
            f"{stats.get('stripeApiRequests')} Stripe API requests (0 expected: payloads trusted)",
        )
    finally:
        peer.stop()
    suite.note(
        TITLE,
        f"{PEER_PACKAGE}@{PEER_VERSION} with stripe@{STRIPE_NODE_VERSION} (npm, cached in "
        f"{CACHE.relative_to(ROOT)}), node {_node_version()}, pg pool 10 (its default), its own PostgreSQL "
        "with the mesh's settings. Both systems stay running throughout (each idles while the other is "
        "measured); runs alternate which goes first. Figures only from runs whose every row/record was "
        "verified; the run notes under the ratio give each run's per-process CPU.",
    )


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"

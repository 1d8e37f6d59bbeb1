"""localstripe (PyPI) as a Stripe stand-in on loopback, for the demo and the tests.

Its stock CLI binds every interface and reloads a pickle shared through /tmp; here it runs in
its own process bound to 127.0.0.1 with a private, in-memory store, so concurrent runs cannot
see each other's data.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp

from services.common.embedded import _wait_for_port, free_port

_BOOT = """
import sys
from aiohttp import web
from localstripe import resources, server
resources.store.dump_to_disk = lambda: None  # keep the store private to this process
web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


class LocalStripe:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = Path(log_dir) / "localstripe.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_for_port("127.0.0.1", self.port, timeout, self.process, self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()

    async def register_webhook(self, webhook_id: str, url: str, secret: str, events: list[str] | None = None) -> None:
        """Make localstripe deliver its events, signed with `secret`, to `url`."""
        data: dict[str, str] = {"url": url, "secret": secret}
        for i, name in enumerate(events or []):
            data[f"events[{i}]"] = name
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.url}/_config/webhooks/{webhook_id}", data=data, headers={"Authorization": "Bearer sk_test_x"}
            ) as resp,
        ):
            resp.raise_for_status()

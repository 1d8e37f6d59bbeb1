"""A service process (and the gateway) freezes what it imported and collects generation 0 less often (measured in
bench/README.md). Run in a child process: the settings are process-wide."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc
from services.common.service import GC_GEN0_THRESHOLD, tune_gc
before = gc.get_threshold()
tune_gc()
after = gc.get_threshold()
print(after[0] == GC_GEN0_THRESHOLD > before[0], after[1:] == before[1:], gc.get_freeze_count() > 10_000)
"""


def test_a_service_process_freezes_its_modules_and_collects_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"]


GATEWAY_CHILD = """
import gc
import uvloop
from gateway.app import serve
from services.common.service import GC_GEN0_THRESHOLD
from services.common.settings import Settings
seen = []
def run(main):
    main.close()
    seen.append(gc.get_threshold()[0])
uvloop.run = run
serve(Settings(nats_url="nats://127.0.0.1:1", webhook_secrets=("whsec_gc",), mode="test"), port=0)
print(seen == [GC_GEN0_THRESHOLD], gc.get_freeze_count() > 10_000)
"""


def test_the_gateway_process_is_tuned_the_same_way() -> None:
    out = subprocess.run([sys.executable, "-c", GATEWAY_CHILD], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True", "True"]

"""Log lines are JSON, carry the event id, and never carry a secret or an e-mail."""

from __future__ import annotations

import io
import json
import logging

from services.common.logs import current_event_id, redact, setup_logging


def test_redaction() -> None:
    line = redact("key sk_test_abc123 secret whsec_XYZ mail Jane.Doe+x@example.co.uk db postgresql://u:pw@h/d")
    assert "sk_test_abc123" not in line and "whsec_XYZ" not in line
    assert "example.co.uk" not in line and ":pw@" not in line


def test_json_lines_with_event_id_and_no_email() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    token = current_event_id.set("evt_123")
    try:
        logging.getLogger("t").warning("customer %s updated", "ann@example.com")
    finally:
        current_event_id.reset(token)
        setup_logging("INFO")
    entry = json.loads(out.getvalue().strip().splitlines()[-1])
    assert entry["event_id"] == "evt_123" and entry["level"] == "WARNING"
    assert "ann@example.com" not in out.getvalue()

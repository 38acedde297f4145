"""The browser tier's loopback guard reads Chromium's net log: it must see traffic that left."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import off_loopback

pytestmark = pytest.mark.unit

TYPES = {"TCP_CONNECT_ATTEMPT": 1, "UDP_CONNECT": 2, "UDP_BYTES_SENT": 3, "DNS_TRANSACTION": 4}


def net_log(tmp_path: Path, *events: tuple[str, int, dict[str, Any]]) -> Path:
    """A net log in Chromium's shape: constants, then events (type, source id, params)."""
    path = tmp_path / "netlog.json"
    body = {
        "constants": {"logEventTypes": TYPES},
        "events": [
            {"type": TYPES[name], "source": {"id": source, "type": 0}, "params": params}
            for name, source, params in events
        ],
    }
    path.write_text(json.dumps(body))
    return path


def test_loopback_only_is_clean(tmp_path: Path) -> None:
    log = net_log(
        tmp_path,
        ("TCP_CONNECT_ATTEMPT", 1, {"address": "127.0.0.1:5000"}),
        ("TCP_CONNECT_ATTEMPT", 2, {"address": "[::1]:5000"}),
        # Chromium's local-address probe: a UDP connect() that never sends.
        ("UDP_CONNECT", 3, {"address": "[2001:4860:4860::8888]:443"}),
    )
    assert off_loopback(log) == []


def test_traffic_off_loopback_is_reported(tmp_path: Path) -> None:
    log = net_log(
        tmp_path,
        ("TCP_CONNECT_ATTEMPT", 1, {"address": "192.0.2.2:443"}),
        ("UDP_CONNECT", 2, {"address": "10.255.255.53:53"}),
        ("UDP_BYTES_SENT", 2, {"byte_count": 40}),
        ("DNS_TRANSACTION", 3, {"hostname": "update.googleapis.com"}),
    )
    assert off_loopback(log) == [
        "DNS query for update.googleapis.com",
        "TCP connect to 192.0.2.2:443",
        "UDP datagram to 10.255.255.53:53",
    ]


def test_a_missing_net_log_is_a_finding(tmp_path: Path) -> None:
    assert off_loopback(tmp_path / "absent.json")

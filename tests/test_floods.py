"""Floods: a password-guessing attack must not become thousands of notifications.

1. With rate_limit = 3 and notify_on = failure, a burst of 40 wrong-password logins: at
   most a handful are sent one by one; the rest are counted in `suppressed` and arrive as
   one "suppressed" summary with counts by user name and remote host that add up exactly.
2. rate_limit = 0 (the default) sends every event.
"""

from __future__ import annotations

from harness import ANY_EVENT_ID, TIME_RE, TIMESTAMP_RE, assert_json_equal

BURST = 40


def wrong_passwords(ln, count: int):
    for _ in range(count):
        ln.failed_login("scram_user", password="guess")


def test_1_a_flood_is_summarised(ln):
    ln.configure(notify_on="failure", rate_limit=3)
    wrong_passwords(ln, BURST)
    summary = ln.endpoint.wait_for_payload(lambda p: p.get("event") == "suppressed", timeout=30)
    singles = [r for r in ln.endpoint.requests if r.field("event") == "login"]
    stats = ln.wait_stats(lambda s: s["suppressed"] + s["sent"] == BURST + 1)
    payload = summary.payload
    suppressed = payload["suppressed"]
    assert suppressed == stats["suppressed"] and suppressed + len(singles) == BURST, (suppressed, len(singles))
    assert len(singles) <= 10, f"{len(singles)} events sent one by one with rate_limit = 3"
    assert_json_equal(payload["byUser"], {"scram_user": suppressed})
    assert_json_equal(payload["byRemoteHost"], {"127.0.0.1": suppressed})
    assert ANY_EVENT_ID.check(payload["eventId"])
    assert TIME_RE.match(payload["time"]) and TIMESTAMP_RE.match(payload["timestamp"])
    assert payload["periodStart"] <= payload["periodEnd"] == payload["time"]
    assert_json_equal(payload["server"], ln.server_info())
    assert payload["schemaVersion"] == 1 and stats["enqueued"] == BURST and stats["dropped"] == 0


def test_2_no_limit_by_default(ln):
    ln.configure(notify_on="failure")
    wrong_passwords(ln, 15)
    ln.endpoint.wait_for(lambda r: r.field("event") == "login", count=15)
    stats = ln.wait_stats(lambda s: s["sent"] == 15)
    assert stats["suppressed"] == 0
    ln.assert_nothing_sent(0.5, lambda r: r.field("event") == "suppressed")

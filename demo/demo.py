#!/usr/bin/env python3
"""login_notification demo (run by `make demo`, after `make install`).

Starts ministack (a local AWS emulator) with a small Python Lambda function that
records every event it gets, and a throwaway PostgreSQL cluster with the extension
preloaded and notify_on = 'all'.  Then it logs in a few times -- a trust login,
a scram-sha-256 login with an application_name and a wrong password -- and shows
what the function received, followed by the extension's stats.  Everything it
started is stopped again, also on Ctrl-C or failure.  Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import PASSWORD, Harness, create_role  # noqa: E402
from ministack_helper import REGION, MiniStack  # noqa: E402
from pgcluster import PG_BIN, PgCluster  # noqa: E402

EXTENSION_LIBRARY = PG_BIN.parent / "lib" / "login_notification.so"
FUNCTION_NAME = "login-notifier"
HBA = [
    "local all all trust",
    "host all alice 127.0.0.1/32 trust",
    "host all all 127.0.0.1/32 scram-sha-256",
]
DELIVERY_TIMEOUT = 30
USERS = ("alice", "bob")


def step(message: str):
    print(f"==> {message}", flush=True)


def start_ministack(stack: ExitStack):
    step("starting ministack (local AWS emulator) on 127.0.0.1")
    ministack = stack.enter_context(MiniStack())
    step(f"deploying Lambda function {FUNCTION_NAME!r} (Python 3.11, records each event)")
    return ministack, ministack.create_recorder(FUNCTION_NAME)


def start_cluster(stack: ExitStack, ministack: MiniStack) -> PgCluster:
    step("starting a throwaway PostgreSQL 15 cluster with login_notification preloaded")
    cluster = PgCluster({
        "login_notification.function_name": FUNCTION_NAME,
        "login_notification.region": REGION,
        "login_notification.endpoint_url": ministack.url,
        "login_notification.notify_on": "all",
        "cluster_name": "demo",
    }, HBA, name="demo")
    stack.enter_context(cluster)
    cluster.sql("CREATE EXTENSION login_notification")
    create_role(cluster, "alice")
    create_role(cluster, "bob", "PASSWORD {pw}")
    return cluster


def log_in(demo: Harness):
    step("alice logs in over TCP (trust) with psql's application_name")
    demo.login("alice", tcp=True, application_name="psql")
    step("bob logs in over TCP with his password (scram-sha-256) as 'billing-service'")
    demo.login("bob", tcp=True, password=PASSWORD, application_name="billing-service")
    step("bob mistypes his password")
    attempt = demo.failed_login("bob", tcp=True, password="hunter2", application_name="psql")
    print(f"    PostgreSQL said: {str(attempt.error).split('FATAL:')[-1].strip()}")


def show_event(number: int, event: dict):
    port = event.get("remotePort")
    host = event.get("remoteHost") + (f":{port}" if port is not None else "")
    print(f"\n--- notification {number}: {event.get('event')} {event.get('status').upper()} ---")
    for label, value in [
        ("status", event.get("status")),
        ("user", event.get("userName")),
        ("database", event.get("databaseName")),
        ("remote host", host),
        ("application", event.get("applicationName") or "(none)"),
        ("auth method", event.get("authMethod")),
        ("time (UTC)", event.get("time")),
        ("server", "{host}:{port} ({clusterName}, PostgreSQL {version})".format(**event.get("server", {}))),
    ]:
        print(f"  {label:<12} {value}")
    print("  raw JSON:")
    print("    " + json.dumps(event, indent=2, ensure_ascii=False).replace("\n", "\n    "))


def show_stats(stats: dict):
    print("\n--- SELECT * FROM login_notification.stats ---")
    for name, value in stats.items():
        print(f"  {name:<14} {value}")


def run(stack: ExitStack):
    if not EXTENSION_LIBRARY.exists():
        sys.exit(f"{EXTENSION_LIBRARY} not found: run `make install` first")
    ministack, function = start_ministack(stack)
    cluster = start_cluster(stack, ministack)
    demo = Harness(cluster, endpoint=None)
    demo.wait_quiet(DELIVERY_TIMEOUT)  # the setup session's own login
    function.clear()
    demo.reset_stats()

    log_in(demo)
    step("waiting for the function to receive the 3 notifications")
    events = function.wait_for(lambda e: e.get("userName") in USERS, DELIVERY_TIMEOUT, count=3)
    for number, event in enumerate(sorted(events, key=lambda e: e.get("time", "")), 1):
        show_event(number, event)
    show_stats(demo.wait_stats(lambda s: s["sent"] >= 3, DELIVERY_TIMEOUT))

    printed = [line for line in ministack.log_text().splitlines()
               if line.startswith("login notification:") and any(f"of '{user}'" in line for user in USERS)]
    if printed:
        print("\n--- what the function printed (ministack's log) ---")
        print("\n".join(f"  {line}" for line in printed))


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up like on Ctrl-C
    with ExitStack() as stack:
        try:
            run(stack)
        except KeyboardInterrupt:
            print("\ninterrupted, cleaning up", file=sys.stderr)
            return 130
        finally:
            step("stopping PostgreSQL and ministack")
    print("done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""login_notification demo (run by `make demo`, after `make install`): the whole chain.

    PostgreSQL + login_notification ──Invoke──▶ ministack Lambda: the notifier (notifier/,
    a Rust `bootstrap` binary) ──Publish──▶ SNS topic ──▶ SQS queue (the "mailbox")

ministack is a local AWS emulator; it runs the notifier as a local process, and the SQS
queue subscribed to the topic stands in for the email subscription of a real deploy.
The demo logs in a few times -- alice (trust), bob (scram-sha-256), bob with a wrong
password, and "monitoring", whom the function's SKIP_USERS drops -- then prints the
messages that reached the queue as an operator would read them, what the function
logged, and the extension's stats.  Everything it started is stopped again, also on
Ctrl-C or failure.  Only 127.0.0.1 is used.
"""

from __future__ import annotations

import signal
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import PASSWORD, Harness, create_role  # noqa: E402
from ministack_helper import REGION, MiniStack  # noqa: E402
from notifier_stack import SERVICES, NotifierStack  # noqa: E402
from pgcluster import PG_BIN, PgCluster  # noqa: E402

EXTENSION_LIBRARY = PG_BIN.parent / "lib" / "login_notification.so"
FUNCTION_NAME = "login-notifier"
SKIPPED_USER = "monitoring"
HBA = [
    "local all all trust",
    f"host all alice,{SKIPPED_USER} 127.0.0.1/32 trust",
    "host all all 127.0.0.1/32 scram-sha-256",
]
DELIVERY_TIMEOUT = 60
EXPECTED_MESSAGES = 3  # alice, bob, bob's failure


def step(message: str):
    print(f"==> {message}", flush=True)


def start_receiving_side(stack: ExitStack) -> tuple[MiniStack, NotifierStack]:
    step("starting ministack (local AWS emulator: Lambda, SNS, SQS, Logs) on 127.0.0.1")
    ministack = stack.enter_context(MiniStack(SERVICES))
    step(f"building the notifier and deploying it as {FUNCTION_NAME!r} (provided.al2023), "
         f"with SKIP_USERS={SKIPPED_USER}; SNS topic -> SQS queue")
    return ministack, NotifierStack(ministack, FUNCTION_NAME, {"SKIP_USERS": SKIPPED_USER})


def start_cluster(stack: ExitStack, ministack: MiniStack) -> PgCluster:
    step("starting a throwaway PostgreSQL 15 cluster (cluster_name 'demo') with login_notification")
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
    create_role(cluster, SKIPPED_USER)
    return cluster


def log_in(demo: Harness):
    step("alice logs in over TCP (trust) with psql's application_name")
    demo.login("alice", tcp=True, application_name="psql")
    step("bob logs in over TCP with his password (scram-sha-256) as 'billing-service'")
    demo.login("bob", tcp=True, password=PASSWORD, application_name="billing-service")
    step("bob mistypes his password")
    attempt = demo.failed_login("bob", tcp=True, password="hunter2", application_name="psql")
    print(f"    PostgreSQL said: {str(attempt.error).split('FATAL:')[-1].strip()}")
    step(f"{SKIPPED_USER} logs in (the function drops it: SKIP_USERS)")
    demo.login(SKIPPED_USER, tcp=True, application_name="prometheus")


def show_mailbox(notifier: NotifierStack):
    messages = notifier.wait_for(lambda n: True, DELIVERY_TIMEOUT, count=EXPECTED_MESSAGES)
    messages.sort(key=lambda n: n.fields().get("time", ""))
    for number, message in enumerate(messages, 1):
        print(f"\n--- message {number} of {len(messages)} in the queue (the operator's mailbox) ---")
        print(f"Subject: {message.subject}")
        print("Attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(message.attributes.items())))
        print()
        print("\n".join(f"  {line}" for line in message.body.splitlines()))


def run(stack: ExitStack):
    if not EXTENSION_LIBRARY.exists():
        sys.exit(f"{EXTENSION_LIBRARY} not found: run `make install` first")
    ministack, notifier = start_receiving_side(stack)
    cluster = start_cluster(stack, ministack)
    demo = Harness(cluster, endpoint=None)
    notifier.wait_for(lambda n: n.attributes.get("userName") == "postgres", DELIVERY_TIMEOUT)
    notifier.received.clear()  # the message about the setup session's own login
    demo.reset_stats()

    log_in(demo)
    step(f"waiting for {EXPECTED_MESSAGES} messages in the queue")
    show_mailbox(notifier)
    log = notifier.wait_log(f"user {SKIPPED_USER} is in SKIP_USERS", DELIVERY_TIMEOUT)
    print("\n--- what the function logged (CloudWatch Logs /aws/lambda/" + FUNCTION_NAME + ") ---")
    print("\n".join(f"  {line}" for line in log.splitlines() if line.startswith(("published", "skipped", "ERROR"))))
    print("\n--- SELECT * FROM login_notification.stats ---")
    for name, value in demo.wait_stats(lambda s: s["sent"] >= EXPECTED_MESSAGES + 1, DELIVERY_TIMEOUT).items():
        print(f"  {name:<14} {value}")


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

"""End to end, the whole chain: PostgreSQL with the extension → ministack's Lambda →
the notifier (notifier/, built and run as a provided.al2023 `bootstrap`) → SNS topic →
an SQS queue subscribed to it, read as the operator's mailbox.

1. A successful TCP login (trust) arrives as one message: a scannable subject, a
   body listing the login's fields, message attributes for filter policies.
2. A failed login (wrong scram-sha-256 password) arrives marked FAILED.
3. A user in the function's SKIP_USERS is invoked but not published; the
   function logs why.
"""

from __future__ import annotations

import pytest

from harness import PASSWORD
from ministack_helper import MiniStack
from notifier_stack import SERVICES, NotifierStack

LABEL = "e2e"
SKIPPED_USER = "plain_user"


@pytest.fixture(scope="module")
def ministack():
    with MiniStack(SERVICES) as stack:
        yield stack


@pytest.fixture(scope="module")
def stack(ministack):
    return NotifierStack(ministack, "login-notifier-e2e",
                         {"DB_LABEL": LABEL, "SKIP_USERS": f"monitoring, {SKIPPED_USER}"})


@pytest.fixture
def notifier(ln, ministack, stack):
    """The chain, with the shared cluster invoking the notifier for every login."""
    ln.configure(endpoint_url=ministack.url, function_name=stack.name, notify_on="all")
    return stack


def only_message_for(notifier, ln, user: str):
    """Wait for the message about `user`; fail if the extension or SNS sent more than one."""
    notifier.wait_for(lambda n: n.attributes.get("userName") == user)
    ln.wait_stats(lambda s: s["sent"] == 1 and s["failed"] == 0, timeout=30)
    messages = [n for n in notifier.receive() if n.attributes.get("userName") == user]
    assert len(messages) == 1, messages
    return messages[0]


def test_01_successful_login(ln, notifier):
    login = ln.login("trusty", tcp=True, application_name="e2e test")
    message = only_message_for(notifier, ln, "trusty")
    assert message.subject == f"[{LABEL}] login: trusty → postgres from 127.0.0.1"
    assert message.attributes == {"event": "login", "status": "success", "userName": "trusty",
                                  "databaseName": "postgres"}
    assert message.body.splitlines()[0] == message.subject
    fields = message.fields()
    assert {k: fields.get(k) for k in ("event", "status", "user", "database", "remote host", "remote port",
                                       "application", "auth method", "ssl", "backend pid", "server port",
                                       "system identifier", "in recovery")} == {
        "event": "login", "status": "success", "user": "trusty", "database": "postgres",
        "remote host": "127.0.0.1", "remote port": str(login.remote_port), "application": "e2e test",
        "auth method": "trust", "ssl": "no", "backend pid": str(login.pid),
        "server port": str(ln.cluster.port), "system identifier": ln.cluster.system_identifier(),
        "in recovery": "no"}
    assert fields["timestamp (UTC)"] == fields["time"][:19].replace("T", " ")


def test_02_failed_login(ln, notifier):
    ln.failed_login("scram_user", tcp=True, password="not the password")
    message = only_message_for(notifier, ln, "scram_user")
    assert message.subject == f"[{LABEL}] FAILED login: scram_user → postgres from 127.0.0.1"
    assert message.attributes["status"] == "failure"
    fields = message.fields()
    assert (fields["status"], fields["auth method"], fields["application"]) == ("failure", "scram-sha-256", "(none)")


def test_03_skipped_user_is_not_published(ln, notifier):
    ln.login(SKIPPED_USER, tcp=True, password=PASSWORD)
    notifier.wait_log(f"skipped login event: user {SKIPPED_USER} is in SKIP_USERS")
    ln.wait_stats(lambda s: s["sent"] == 1, timeout=30)
    assert not [n for n in notifier.receive() if n.attributes.get("userName") == SKIPPED_USER]

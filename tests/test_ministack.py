"""End to end against ministack, a local AWS emulator running a real Python Lambda.

1. An Event invoke: a TCP login reaches the recorder function, which records
   exactly the payload; ministack's 202 counts as sent (no failure).
2. A RequestResponse invoke: the function runs synchronously and the 200 with its
   result counts as sent.
"""

from __future__ import annotations

import pytest

from harness import PASSWORD
from ministack_helper import MiniStack


@pytest.fixture(scope="module")
def ministack():
    with MiniStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def function(ministack):
    return ministack.create_recorder("login-recorder")


@pytest.fixture
def recorder(ministack, function, ln):
    """The recorder function with no events yet, and the cluster pointed at ministack."""
    function.clear()
    ln.configure(endpoint_url=ministack.url, function_name=function.name)
    return function


def delivered_through_ministack(ln, recorder, login, auth_method):
    events = recorder.wait_for(lambda e: e.get("userName") == login.user)
    assert len(events) == 1, events
    ln.assert_payload(events[0], login, auth_method=auth_method)
    stats = ln.wait_stats(lambda s: s["sent"] == 1, timeout=30)
    assert (stats["enqueued"], stats["sent"], stats["failed"], stats["retried"]) == (1, 1, 0, 0), stats


def test_01_event_invoke_reaches_the_function(ln, recorder):
    login = ln.login("trusty", tcp=True, application_name="ministack test")
    delivered_through_ministack(ln, recorder, login, "trust")


def test_02_request_response_invoke(ln, recorder):
    ln.configure(invocation_type="request_response")
    login = ln.login("scram_user", tcp=True, password=PASSWORD)
    delivered_through_ministack(ln, recorder, login, "scram-sha-256")

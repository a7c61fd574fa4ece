"""Privileges and secrets.

1. A non-superuser cannot change any setting: SET in a session, ALTER ROLE ... SET,
   ALTER SYSTEM; nor see the destination settings.
2. A non-superuser cannot call send_test or reset_stats, and cannot read stats or
   hook_timing — unless a member of pg_monitor, who can read but not reset or send.
3. Even if EXECUTE on send_test is granted by mistake, a non-superuser is refused.
4. Credentials never appear in the server log or in stats.last_error, whatever fails.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from conftest import main_hba
from harness import PASSWORD, Harness, create_role, stop_cluster

# Each setting with a valid value other than its default.
SETTINGS = {"enabled": "off", "function_name": "elsewhere", "region": "eu-west-1",
            "endpoint_url": "http://127.0.0.1:1", "invocation_type": "request_response",
            "notify_on": "all", "skip_users": "plain_user", "skip_databases": "postgres",
            "timeout": "1000", "max_retries": "0", "max_concurrency": "1", "rate_limit": "1",
            "spool_max_events": "1"}


def session(ln, user):
    return ln.cluster.connect(user, tcp=True, password=PASSWORD)


@pytest.mark.parametrize("name, value", SETTINGS.items())
def test_1_a_non_superuser_cannot_change_settings(ln, name, value):
    literal = "'" + value + "'"
    with session(ln, "plain_user") as conn:
        with pytest.raises(errors.CantChangeRuntimeParam):
            conn.execute(f"SET login_notification.{name} = {literal}")
        with pytest.raises(psycopg.Error):
            conn.execute(f"ALTER ROLE plain_user SET login_notification.{name} = {literal}")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"ALTER SYSTEM SET login_notification.{name} = {literal}")
    assert ln.cluster.sql("SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
                          " WHERE r.rolname = 'plain_user'") == []


@pytest.mark.parametrize("name", ["function_name", "endpoint_url", "region"])
def test_1_destination_settings_are_hidden_from_non_superusers(ln, name):
    with session(ln, "plain_user") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SHOW login_notification.{name}")


@pytest.mark.parametrize("query", [
    "SELECT login_notification.send_test()",
    "SELECT login_notification.send_test('someone')",
    "SELECT login_notification.reset_stats()",
    "SELECT * FROM login_notification.stats",
    "SELECT * FROM login_notification.stats()",
    "SELECT * FROM login_notification.hook_timing()",
])
def test_2_a_plain_user_is_refused(ln, query):
    with session(ln, "plain_user") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(query)


def test_2_pg_monitor_reads_but_cannot_reset_or_send(ln):
    ln.assert_delivered(ln.login("trusty", tcp=True))
    ln.wait_stats(lambda s: s["sent"] == 1)
    with session(ln, "monitor_user") as conn:
        row = conn.execute("SELECT sent, worker_pid FROM login_notification.stats").fetchone()
        assert row[0] == 1 and row[1]
        assert conn.execute("SELECT calls FROM login_notification.hook_timing()").fetchone()[0] >= 1
        for query in ("SELECT login_notification.reset_stats()", "SELECT login_notification.send_test()"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(query)
    # Not reset: the first login and monitor_user's own are both still counted.
    ln.wait_stats(lambda s: s["sent"] == 2)


def test_3_granting_execute_does_not_bypass_the_superuser_check(ln):
    ln.cluster.sql("GRANT EXECUTE ON FUNCTION login_notification.send_test(text), "
                   "login_notification.reset_stats() TO plain_user")
    try:
        with session(ln, "plain_user") as conn:
            for query in ("SELECT login_notification.send_test()", "SELECT login_notification.reset_stats()"):
                with pytest.raises(errors.InsufficientPrivilege, match="Only superusers"):
                    conn.execute(query)
    finally:
        ln.cluster.sql("REVOKE EXECUTE ON FUNCTION login_notification.send_test(text), "
                       "login_notification.reset_stats() FROM plain_user")


ACCESS_KEY_ID = "AKIALNTESTKEYID00042"
SECRET_KEY = "lnSecretThatMustNeverBeLogged/4242+xyz"


@pytest.fixture
def secret_cluster(make_cluster, endpoint):
    cluster = make_cluster({"login_notification.max_retries": 1,
                            "log_min_messages": "debug1"}, hba=main_hba(), name="secrets")
    stop_cluster(cluster)  # restart with the credentials below in its environment
    cluster.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    cluster.start()
    cluster.sql("CREATE EXTENSION login_notification")
    create_role(cluster, "trusty")
    endpoint.reset()
    yield Harness(cluster, endpoint)
    stop_cluster(cluster)


def test_4_credentials_never_appear_in_logs_or_last_error(secret_cluster):
    ln = secret_cluster
    seen_errors = []
    for mode, word in (("forbidden", "AccessDenied"), ("http500", "ServiceException"),
                       ("not_found", "ResourceNotFound"), ("refused", "dispatch")):
        if mode == "refused":
            ln.endpoint.stop()
        else:
            ln.endpoint.set_mode(mode)
        ln.login("trusty", tcp=True, application_name=mode)
        stats = ln.wait_stats(lambda s, w=word: w in (s["last_error"] or ""), what=f"a {mode} error")
        seen_errors.append(stats["last_error"])
    ln.endpoint.start()
    # The key id is what SigV4 sends (so the credentials were used); the secret never is.
    assert ACCESS_KEY_ID in ln.endpoint.requests[0].headers["authorization"]
    assert all(SECRET_KEY not in r.headers.get("authorization", "") for r in ln.endpoint.requests)
    log = ln.cluster.log_text()
    for text in [log, *seen_errors]:
        assert SECRET_KEY not in text and ACCESS_KEY_ID not in text, text
    assert all(seen_errors), seen_errors

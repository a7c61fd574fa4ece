"""Integration tests of login_notification against a fake Lambda endpoint.

Scenarios (the number is in each test's name):

 1. TCP trust login: exact payload (127.0.0.1, client port, trust, applicationName),
    sent as an Event invoke of "recorder" with a SigV4 signature that botocore (AWS's own
    signer) recomputes to the same value.
 2. TCP scram-sha-256 login: exact payload, authMethod scram-sha-256.
 3. Unix-socket login: remoteHost "[local]", remotePort null, authMethod trust.
 4. No application_name sent by the client: applicationName null.
 5. "password" auth method over TCP: authMethod "password".
 6. Wrong password with notify_on=success (default): nothing is sent or enqueued.
 7. notify_on=failure: the wrong password is reported as a failure; successes are not.
 8. notify_on=all: both successes and failures are reported.
 9. Client that gives up when asked for a password (psql -w): nothing is reported,
    and a normal login afterwards is delivered.
10. Trust login of a role that does not exist: reported as success, login refused.
11. skip_users: listed users (quoted names with comma/space/quote too) are skipped
    and counted in `skipped`; matching is exact and case-sensitive.
12. skip_databases: the same for databases.
13. Role, database and application names with quotes, backslashes, spaces and
    non-ASCII characters are reported exactly as PostgreSQL stores them.
14. A role name longer than NAMEDATALEN is reported truncated to 63 bytes, as stored.
15. Endpoint refusing connections: logins stay fast, `failed` counts the event and
    last_error is set; once the endpoint is back the next login is delivered.
16. Endpoint hanging, timeout=500ms, max_retries=0: logins stay fast, the event
    fails after the timeout, with exactly one attempt.
17. HTTP 500 for two attempts then OK, max_retries=2: delivered, retried=2, sent=1.
18. 404 ResourceNotFound / 403 AccessDenied: not retried, failed=1, last_error set.
19. function_name reloaded without restart: the next login goes to the new function;
    a qualified ARN reaches the endpoint URL-encoded in the path, correctly signed.
20. invocation_type=request_response: x-amz-invocation-type RequestResponse, counted sent.
21. send_test(): returns the "test" payload that then arrives unchanged; user_name
    argument; superuser only; error when function_name is empty.
22. stats: columns and types, counters match deliveries, worker_pid is the
    login_notification background worker, the stats() function agrees with the view,
    reset_stats() zeroes; readable by pg_monitor members only, reset by superusers only.
23. enabled=off: nothing sent or enqueued.
24. function_name='': nothing sent or enqueued.
25. Invalid settings are refused and the previous value stays: ALTER SYSTEM with a bad
    enum, a malformed endpoint URL or out-of-range numbers; SET in a session; a bad
    value in postgresql.conf is rejected at reload with a log line.
26. Queue full (queue_size=4, endpoint hanging, max_concurrency=1): a burst of 30
    logins all succeed fast, dropped > 0 and enqueued + dropped = 30; clusterName is
    reported when cluster_name is set.
27. The worker is terminated (pg_terminate_backend): it logs its stop, the postmaster
    restarts it (no crash restart), a login made while it was down stays queued and is
    delivered by the new worker, which shows in pg_stat_activity.
28. hook_timing() counts every hook call (reported or not) and the time spent in it, with quantiles;
    reset_stats() zeroes it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from datetime import datetime

import psycopg
import pytest
from psycopg import errors, sql

from harness import (FAST_LOGIN_SECONDS, FUNCTION_NAME, PASSWORD, PAYLOAD_KEYS, SETTING_PREFIX, Harness,
                     assert_json_equal, create_role, stop_cluster)
from lambda_endpoint import sigv4_problem
from pgcluster import AWS_TEST_ENV, PG_BIN, wait_until

STAT_COLUMNS = [
    ("queued", "bigint"), ("enqueued", "bigint"), ("sent", "bigint"), ("failed", "bigint"),
    ("retried", "bigint"), ("dropped", "bigint"), ("skipped", "bigint"), ("suppressed", "bigint"),
    ("spooled", "bigint"), ("hook_errors", "bigint"),
    ("last_sent_at", "timestamp with time zone"), ("last_error", "text"),
    ("last_error_at", "timestamp with time zone"), ("worker_pid", "integer"),
]
# queued and spooled are gauges (current depths), the rest count up.
COUNTERS = [name for name, kind in STAT_COLUMNS if kind == "bigint" and name not in ("queued", "spooled")]


def counters(stats: dict) -> dict:
    return {name: stats[name] for name in COUNTERS}


def only(**nonzero) -> dict:
    """The counters as they must be: all zero except the ones given."""
    return {name: nonzero.get(name, 0) for name in COUNTERS}


def is_user(name):
    return lambda request: request.field("userName") == name


def is_not_user(name):
    return lambda request: request.field("userName") != name


def wrong_password_login(ln, user="scram_user"):
    return ln.failed_login(user, tcp=True, password="not the password", application_name="wrongpw")


# -- 1-5: what a successful login looks like -------------------------------------

def test_01_tcp_trust_login_payload(ln):
    login = ln.login("trusty", tcp=True, application_name="psql")
    request = ln.assert_delivered(login)
    assert request.function == FUNCTION_NAME
    assert request.raw_path == f"/2015-03-31/functions/{FUNCTION_NAME}/invocations"
    assert request.invocation_type == "Event"
    authorization = request.headers.get("authorization", "")
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=test/"), authorization
    assert "/us-east-1/lambda/aws4_request" in authorization, authorization
    secret = AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]
    assert sigv4_problem(request, secret) is None, sigv4_problem(request, secret)
    # The check itself rejects a changed body, path or secret.
    assert sigv4_problem(dataclasses.replace(request, body=request.body + b" "), secret)
    assert sigv4_problem(dataclasses.replace(request, raw_path=request.raw_path.replace("/invocations", "/x")), secret)
    assert sigv4_problem(request, "another secret")
    assert isinstance(login.remote_port, int) and login.remote_port > 0
    assert login.seconds < FAST_LOGIN_SECONDS
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1)


def test_02_tcp_scram_login_payload(ln):
    login = ln.login("scram_user", tcp=True, password=PASSWORD, application_name="app scram")
    ln.assert_delivered(login, auth_method="scram-sha-256")


def test_03_unix_socket_login_payload(ln):
    login = ln.login("postgres", application_name="over the socket")
    assert login.remote_port is None and login.remote_host == "[local]"
    ln.assert_delivered(login)


def test_04_no_application_name_is_null(ln):
    login = ln.login("trusty", tcp=True)
    assert login.application_name is None, "the client sent an application_name"
    ln.assert_delivered(login)


def test_05_password_auth_method(ln):
    login = ln.login("pw_user", tcp=True, password=PASSWORD)
    ln.assert_delivered(login, auth_method="password")


# -- 6-10: which logins are reported ------------------------------------------

def test_06_wrong_password_not_reported_by_default(ln):
    assert ln.cluster.show(SETTING_PREFIX + "notify_on") == "success"
    wrong_password_login(ln)
    marker = ln.login("trusty", tcp=True)
    ln.assert_delivered(marker)
    ln.assert_nothing_sent(0.5, is_not_user("trusty"))
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1)


def test_07_notify_on_failure_reports_only_failures(ln):
    ln.configure(notify_on="failure")
    failure = wrong_password_login(ln)
    assert "password authentication failed" in str(failure.error)
    ln.assert_delivered(failure, status="failure", auth_method="scram-sha-256")
    ln.login("trusty", tcp=True)
    ln.login("scram_user", tcp=True, password=PASSWORD)
    ln.assert_nothing_sent(1.0, lambda r: r.field("status") != "failure")
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1)


def test_08_notify_on_all_reports_both(ln):
    ln.configure(notify_on="all")
    success = ln.login("scram_user", tcp=True, password=PASSWORD, application_name="ok")
    failure = wrong_password_login(ln)
    ln.assert_delivered(success, auth_method="scram-sha-256")
    ln.assert_delivered(failure, status="failure", auth_method="scram-sha-256")
    assert counters(ln.wait_stats(lambda s: s["sent"] == 2)) == only(enqueued=2, sent=2)


def test_09_client_abort_is_not_reported(ln):
    ln.configure(notify_on="all")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = "/nonexistent"
    psql = subprocess.run(
        [str(PG_BIN / "psql"), "-w", "-X", "-h", "127.0.0.1", "-p", str(ln.cluster.port),
         "-U", "scram_user", "-d", "postgres", "-c", "SELECT 1"],
        env=env, capture_output=True, text=True, timeout=30)
    assert psql.returncode != 0 and "no password supplied" in psql.stderr, psql.stderr
    marker = ln.login("trusty", tcp=True)
    ln.assert_delivered(marker)
    ln.assert_nothing_sent(1.0, is_user("scram_user"))
    assert counters(ln.stats()) == only(enqueued=1, sent=1)


def test_10_trust_login_of_missing_role_reported_as_success(ln):
    attempt = ln.failed_login("ghost", tcp=True, application_name="boo")
    assert 'role "ghost" does not exist' in str(attempt.error)
    ln.assert_delivered(attempt)


# -- 11-14: names --------------------------------------------------------------

@pytest.fixture(scope="module")
def skip_names(cluster):
    """Roles and a database for the skip-list tests."""
    names = {"comma": "skip, me", "quote": 'say "hi"', "plain": "skipper", "case": "Skipper"}
    for name in names.values():
        create_role(cluster, name)
    cluster.sql('CREATE DATABASE "skip db, x"')
    return names


def test_11_skip_users(ln, skip_names):
    ln.configure(skip_users='"skip, me", skipper,"say ""hi"""')
    for user in ("skip, me", "skipper", 'say "hi"'):
        ln.login(user)
    not_skipped = ln.login("Skipper")
    ln.assert_delivered(not_skipped)
    ln.assert_nothing_sent(0.5, is_not_user("Skipper"))
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1, skipped=3)


def test_12_skip_databases(ln, skip_names):
    ln.configure(skip_databases='template1, "skip db, x"')
    ln.login("postgres", "skip db, x")
    delivered = ln.login("postgres", "postgres")
    ln.assert_delivered(delivered)
    ln.assert_nothing_sent(0.5, lambda r: r.field("databaseName") != "postgres")
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1, skipped=1)


SPECIAL_NAMES = ["o'brien", 'dq"name', "back\\slash", "with space", "café", "日本", "elephant 🐘"]


@pytest.fixture(scope="module")
def special_names(cluster):
    for name in SPECIAL_NAMES:
        create_role(cluster, name)
    database = "db 'q\" \\ é日本🐘"
    cluster.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return SPECIAL_NAMES, database


def test_13_special_characters_in_names(ln, special_names):
    roles, database = special_names
    logins = [ln.login(role, database, application_name=f"app {role}") for role in roles]
    stored_db = ln.cluster.sql_value("SELECT datname::text FROM pg_database WHERE datname = %s", [database])
    for login, role in zip(logins, roles):
        stored_role = ln.cluster.sql_value("SELECT rolname::text FROM pg_roles WHERE rolname = %s", [role])
        assert (login.user, login.dbname) == (stored_role, stored_db)
        ln.assert_delivered(login)  # applicationName as in pg_stat_activity
    # PostgreSQL replaces non-printable-ASCII bytes of application_name: with '?' up to
    # 15, with \xNN escapes from 16.
    cleaned = "app caf??" if int(ln.cluster.show("server_version_num")) < 160000 else "app caf\\xc3\\xa9"
    assert logins[roles.index("café")].application_name == cleaned


def test_14_long_role_name_truncated_as_stored(ln):
    long_name = "x" * 70
    create_role(ln.cluster, long_name)  # PostgreSQL truncates it (NOTICE)
    stored = ln.cluster.sql_value("SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'xxxx%'")
    assert stored == "x" * 63
    login = ln.login(long_name)
    assert login.user == stored
    ln.assert_delivered(login)


# -- 15-20: delivery ---------------------------------------------------------------

def test_15_endpoint_down_then_back(ln):
    ln.configure(max_retries=1)
    ln.endpoint.stop()
    login = ln.login("trusty", tcp=True, application_name="while down")
    assert login.seconds < FAST_LOGIN_SECONDS
    stats = ln.wait_stats(lambda s: s["failed"] == 1, timeout=60, what="the event to fail")
    assert counters(stats) == only(enqueued=1, failed=1, retried=1)
    assert stats["last_error"] and stats["last_error_at"] is not None, stats
    assert ln.wait_stats(lambda s: s["spooled"] == 1, what="the event in the spool")
    ln.endpoint.start()
    again = ln.login("postgres", application_name="after")
    ln.assert_delivered(again)
    # The spooled event is delivered too, once the endpoint answers.
    ln.assert_delivered(login)
    stats = ln.wait_stats(lambda s: s["sent"] == 2 and s["spooled"] == 0)
    assert counters(stats) == only(enqueued=2, sent=2, failed=1, retried=1)
    assert len({r.field("eventId") for r in ln.endpoint.requests}) == 2


def test_16_endpoint_hangs_past_timeout(ln):
    ln.configure(timeout=500, max_retries=0)
    ln.endpoint.set_mode("hang")
    login = ln.login("trusty", tcp=True)
    assert login.seconds < FAST_LOGIN_SECONDS
    request = ln.wait_event(login)
    stats = ln.wait_stats(lambda s: s["failed"] == 1, timeout=15, what="the timeout")
    assert counters(stats) == only(enqueued=1, failed=1)
    assert stats["last_error"], stats
    waited = stats["last_error_at"].timestamp() - request.received_at
    assert 0.4 <= waited <= 5, f"failed {waited:.2f}s after the request, timeout is 0.5s"
    assert ln.wait_stats(lambda s: s["spooled"] == 1, what="the event in the spool")
    # Later attempts come from the spool and carry the same event.
    assert {r.body for r in ln.endpoint.requests} == {request.body}, ln.endpoint.describe()


def test_17_http_500_retried_until_success(ln):
    ln.configure(max_retries=2)
    ln.endpoint.set_mode("http500", count=2)
    login = ln.login("trusty", tcp=True)
    ln.endpoint.wait_for(is_user("trusty"), count=3, timeout=30)
    stats = ln.wait_stats(lambda s: s["sent"] == 1, timeout=30)
    assert counters(stats) == only(enqueued=1, sent=1, retried=2)
    attempts = ln.endpoint.requests
    assert [r.mode for r in attempts] == ["http500", "http500", "ok"]
    assert len({r.body for r in attempts}) == 1, "every attempt must send the same payload"
    ln.assert_payload(attempts[-1].payload, login)


@pytest.mark.parametrize("mode", ["not_found", "forbidden"])
def test_18_client_errors_are_not_retried(ln, mode):
    ln.configure(max_retries=3)
    ln.endpoint.set_mode(mode)
    ln.login("trusty", tcp=True)
    stats = ln.wait_stats(lambda s: s["failed"] == 1, timeout=30)
    assert counters(stats) == only(enqueued=1, failed=1)
    expected_error = {"not_found": ("404", "notfound", "not found"),
                      "forbidden": ("403", "accessdenied", "not authorized")}[mode]
    assert any(word in stats["last_error"].lower() for word in expected_error), stats["last_error"]
    first = ln.endpoint.requests[0]
    ln.assert_nothing_sent(0.5, lambda r: r is not first)
    assert len(ln.endpoint.requests) == 1


def test_19_function_name_reload(ln):
    ln.configure(function_name="other_function")
    first = ln.login("trusty", tcp=True, application_name="first")
    assert ln.wait_event(first).function == "other_function"
    arn = "arn:aws:lambda:us-east-1:123456789012:function:recorder:prod"
    ln.configure(function_name=arn)
    second = ln.login("trusty", tcp=True, application_name="second")
    request = ln.endpoint.wait_for_payload(lambda p: p.get("applicationName") == "second")
    assert request.function == arn
    assert request.raw_path == (
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction"
        "%3Arecorder%3Aprod/invocations")
    ln.assert_payload(request.payload, second)
    assert sigv4_problem(request, AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"]) is None, sigv4_problem(
        request, AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"])


def test_20_request_response_invocation(ln):
    ln.configure(invocation_type="request_response")
    login = ln.login("trusty", tcp=True)
    request = ln.assert_delivered(login)
    assert request.invocation_type == "RequestResponse"
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1)


# -- 21-22: SQL functions ----------------------------------------------------------

def test_21_send_test(ln):
    returned = ln.cluster.sql_value("SELECT login_notification.send_test()")
    assert set(returned) == PAYLOAD_KEYS, sorted(returned)
    assert (returned["event"], returned["userName"]) == ("test", "postgres")
    received = ln.endpoint.wait_for_payload(lambda p: p.get("event") == "test").payload
    assert_json_equal(received, returned)
    assert_json_equal(received["server"], ln.server_info())

    someone = ln.cluster.sql_value("SELECT login_notification.send_test('someone')")
    assert (someone["event"], someone["userName"]) == ("test", "someone")
    received = ln.endpoint.wait_for_payload(lambda p: p.get("userName") == "someone").payload
    assert_json_equal(received, someone)

    with ln.cluster.connect("plain_user") as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("SELECT login_notification.send_test()")

    ln.configure(function_name="")
    with pytest.raises(psycopg.Error):
        ln.cluster.sql("SELECT login_notification.send_test()")


def test_22_stats(ln):
    columns = ln.cluster.sql(
        "SELECT column_name::text, data_type::text FROM information_schema.columns"
        " WHERE table_schema = 'login_notification' AND table_name = 'stats' ORDER BY ordinal_position")
    assert columns == STAT_COLUMNS

    worker_pids = ln.cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'login_notification'")
    assert len(worker_pids) == 1, worker_pids
    assert ln.stats()["worker_pid"] == worker_pids[0][0]

    before = time.time()
    for _ in range(3):
        ln.login("trusty", tcp=True)
    ln.endpoint.wait_for(is_user("trusty"), count=3)
    stats = ln.wait_stats(lambda s: s["sent"] == 3)
    assert counters(stats) == only(enqueued=3, sent=3)
    assert stats["queued"] == 0
    assert isinstance(stats["last_sent_at"], datetime)
    assert before - 1 <= stats["last_sent_at"].timestamp() <= time.time() + 1
    function_row = ln.cluster.sql("SELECT * FROM login_notification.stats()")
    assert function_row == ln.cluster.sql("SELECT * FROM login_notification.stats")

    ln.reset_stats()
    assert counters(ln.stats()) == only()

    with ln.cluster.connect("monitor_user") as conn:
        assert conn.execute("SELECT count(*) FROM login_notification.stats").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM login_notification.stats()").fetchone() == (1,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT login_notification.reset_stats()")
    with ln.cluster.connect("plain_user") as conn:
        for query in ("SELECT * FROM login_notification.stats", "SELECT * FROM login_notification.stats()",
                      "SELECT login_notification.reset_stats()"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(query)


# -- 23-26: switches, validation, overload ---------------------------------------

@pytest.mark.parametrize("setting", [{"enabled": False}, {"function_name": ""}],
                         ids=["23_enabled_off", "24_empty_function_name"])
def test_23_24_nothing_sent_when_switched_off(ln, setting):
    ln.configure(**setting)
    login = ln.login("trusty", tcp=True)
    ln.assert_nothing_sent(1.0)
    assert counters(ln.stats()) == only()
    ln.configure(**{name: None for name in setting})  # back to postgresql.conf
    again = ln.login("trusty", tcp=True)
    ln.assert_delivered(again)
    assert login.pid != again.pid


@pytest.mark.parametrize("name, value", [
    ("notify_on", "bogus"),
    ("invocation_type", "sometimes"),
    ("endpoint_url", "not a url"),
    ("timeout", "-1"),
    ("max_retries", "-1"),
    ("max_concurrency", "-1"),
])
def test_25_invalid_settings_refused(ln, name, value):
    setting = SETTING_PREFIX + name
    before = ln.cluster.show(setting)
    with pytest.raises(psycopg.Error):
        ln.cluster.alter_system({setting: value})
    assert ln.cluster.show(setting) == before
    assert setting not in (ln.cluster.data_dir / "postgresql.auto.conf").read_text()


def test_25_set_in_session_refused(ln):
    with pytest.raises(errors.CantChangeRuntimeParam):
        ln.cluster.sql("SET login_notification.function_name = 'elsewhere'")
    with ln.cluster.connect() as conn, pytest.raises(errors.CantChangeRuntimeParam):
        conn.execute("SET login_notification.notify_on = 'all'")


def test_25_invalid_value_in_config_file_ignored_at_reload(ln):
    log_mark = ln.cluster.log_size()
    ln.cluster.write_extra_conf({SETTING_PREFIX + "notify_on": "bogus"})
    ln.cluster.reload()
    wait_until(lambda: 'login_notification.notify_on' in ln.cluster.log_text(log_mark), 10,
               what="a log line about the bad value")
    assert "bogus" in ln.cluster.log_text(log_mark)
    assert ln.cluster.show(SETTING_PREFIX + "notify_on") == "success"


@pytest.fixture
def small_queue(make_cluster, endpoint):
    cluster = make_cluster({"login_notification.queue_size": 4,
                            "login_notification.max_concurrency": 1,
                            "login_notification.max_retries": 0,
                            "cluster_name": "ln_small_queue"}, name="small_queue")
    endpoint.reset()
    harness = Harness(cluster, endpoint)
    yield harness
    endpoint.release()
    stop_cluster(cluster)


LOGIN_BURST = 30


def test_26_queue_full_drops_without_blocking(small_queue):
    ln = small_queue
    assert ln.cluster.show(SETTING_PREFIX + "queue_size") == "4"
    ln.endpoint.set_mode("hang")
    ln.reset_stats()
    started = time.monotonic()
    slowest = max(ln.login("postgres").seconds for _ in range(LOGIN_BURST))
    assert slowest < FAST_LOGIN_SECONDS and time.monotonic() - started < LOGIN_BURST * FAST_LOGIN_SECONDS / 2
    stats = ln.stats()
    assert stats["dropped"] > 0, stats
    assert stats["enqueued"] + stats["dropped"] == LOGIN_BURST, stats
    assert stats["queued"] <= 4, stats
    ln.endpoint.release()
    delivered = ln.endpoint.wait_for_payload(lambda p: p.get("userName") == "postgres")
    assert delivered.payload["server"]["clusterName"] == "ln_small_queue"
    assert_json_equal(delivered.payload["server"], ln.server_info())


def worker_pids(cluster) -> list:
    return [pid for (pid,) in cluster.sql(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'login_notification'")]


def test_27_terminated_worker_is_restarted_and_delivers_what_queued(ln):
    old_pid = ln.stats()["worker_pid"]
    assert worker_pids(ln.cluster) == [old_pid]
    log_mark = ln.cluster.log_size()
    ln.cluster.sql("SELECT pg_terminate_backend(%s)", (old_pid,))
    wait_until(lambda: ln.stats()["worker_pid"] is None, 10, what="the worker to stop")
    wait_until(lambda: "login_notification worker stopped" in ln.cluster.log_text(log_mark), 10,
               what="the worker's stop in the log")

    while_down = ln.login("trusty", tcp=True, application_name="while the worker is down")
    assert while_down.seconds < FAST_LOGIN_SECONDS
    assert ln.stats()["queued"] == 1

    ln.assert_delivered(while_down, timeout=30)
    new_pid = ln.stats()["worker_pid"]
    assert new_pid not in (None, old_pid)
    assert worker_pids(ln.cluster) == [new_pid]
    assert counters(ln.wait_stats(lambda s: s["sent"] == 1)) == only(enqueued=1, sent=1)
    log = ln.cluster.log_text(log_mark)
    assert "terminating background worker" not in log and "crash" not in log, log


def test_28_hook_timing_counts_every_hook_call(ln):
    ln.reset_stats()
    ln.login("trusty", tcp=True)
    ln.failed_login("scram_user", password="wrong")
    calls, total_ns, avg_ns, p50, p90, p99 = ln.cluster.sql(
        "SELECT * FROM login_notification.hook_timing()")[0]
    # One call per authentication attempt that reached the hook, reported or not.
    assert calls >= 2 and total_ns > 0 and avg_ns == pytest.approx(total_ns / calls), (calls, total_ns)
    # Quantiles are bucket upper bounds, ordered; with under 100 calls p99 bounds the slowest,
    # so it bounds the mean too.
    assert 0 < p50 <= p90 <= p99, (p50, p90, p99)
    assert calls > 100 or avg_ns <= p99, (calls, avg_ns, p99)
    ln.reset_stats()
    assert ln.cluster.sql("SELECT calls, total_ns, p50_ns, p99_ns "
                          "FROM login_notification.hook_timing()")[0] == (0, 0, None, None)

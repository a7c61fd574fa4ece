"""Helpers shared by the integration tests: logins, stats, expected payloads."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg import sql

from lambda_endpoint import LambdaEndpoint
from pgcluster import SUPERUSER, PgCluster, wait_until

SETTING_PREFIX = "login_notification."
FUNCTION_NAME = "recorder"  # what postgresql.conf of the test clusters names
PASSWORD = "s3cret pw'\""  # for every password-authenticated test role
PAYLOAD_KEYS = {
    "schemaVersion", "eventId", "event", "status", "userName", "databaseName", "remoteHost", "remotePort",
    "applicationName", "authMethod", "ssl", "sslVersion", "sslCipher", "backendPid",
    "timestamp", "time", "server",
}
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
CLOCK_SLACK = 1.0  # seconds allowed between our clock readings and the event time
FAST_LOGIN_SECONDS = 1.0  # a login must never wait for the notification


def create_role(cluster: PgCluster, name: str, options: str = ""):
    """CREATE ROLE name LOGIN <options>; "{pw}" in options stands for PASSWORD."""
    cluster.sql(sql.SQL("CREATE ROLE {} LOGIN " + options).format(
        sql.Identifier(name), pw=sql.Literal(PASSWORD)))


def stop_cluster(cluster: PgCluster):
    """Stop and remove a cluster; fail the test if the server crashed at any point."""
    cluster.stop()
    crashes = cluster.crash_lines()
    log = cluster.log_text()
    cluster.remove()
    if crashes:
        pytest.fail("server log shows a crash:\n" + "\n".join(crashes) + "\n--- log ---\n" + log)


class Matcher:
    """Stands in an expected payload for a value we cannot know exactly."""

    def __init__(self, description: str, check):
        self.description, self.check = description, check

    def __repr__(self):
        return f"<{self.description}>"


ANY_PID = Matcher("any backend pid", lambda v: type(v) is int and v > 0)
ANY_PORT = Matcher("any TCP port", lambda v: type(v) is int and 0 < v < 65536)
UUID_V7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ANY_EVENT_ID = Matcher("a UUIDv7", lambda v: type(v) is str and bool(UUID_V7_RE.match(v)))


def assert_json_equal(actual, expected, path: str = "$"):
    """Strict equality: same keys, same JSON types (True is not 1), same values."""
    if isinstance(expected, Matcher):
        assert expected.check(actual), f"{path}: {actual!r} is not {expected.description}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), (
            f"{path}: keys differ: missing {sorted(set(expected) - set(actual))}, "
            f"unexpected {sorted(set(actual) - set(expected))}")
        for key in expected:
            assert_json_equal(actual[key], expected[key], f"{path}.{key}")
    else:
        assert type(actual) is type(expected) and actual == expected, (
            f"{path}: expected {expected!r} ({type(expected).__name__}), "
            f"got {actual!r} ({type(actual).__name__})")


@dataclass
class Login:
    """What we know about one login attempt, for building the expected payload."""

    user: str
    dbname: str
    remote_host: str  # "127.0.0.1" or "[local]"
    started: float
    finished: float
    pid: object = ANY_PID
    remote_port: object = None
    application_name: str | None = None
    error: psycopg.Error | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def parse_event_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def assert_times(payload: dict, started: float, finished: float):
    """time is RFC 3339 UTC with 6 fractional digits within the window; timestamp agrees."""
    event_time, timestamp = payload.get("time"), payload.get("timestamp")
    assert isinstance(event_time, str) and TIME_RE.match(event_time), f"bad time {event_time!r}"
    assert isinstance(timestamp, str) and TIMESTAMP_RE.match(timestamp), f"bad timestamp {timestamp!r}"
    assert timestamp == event_time[:19].replace("T", " "), f"timestamp {timestamp} != time {event_time}"
    at = parse_event_time(event_time)
    assert started - CLOCK_SLACK <= at <= finished + CLOCK_SLACK, (
        f"time {event_time} outside the login window "
        f"{datetime.fromtimestamp(started, timezone.utc)} .. {datetime.fromtimestamp(finished, timezone.utc)}")


class Harness:
    """One test's view of a cluster with the extension and the fake endpoint."""

    def __init__(self, cluster: PgCluster, endpoint: LambdaEndpoint):
        self.cluster, self.endpoint = cluster, endpoint
        self._server_info = None

    # -- settings ---------------------------------------------------------
    def configure(self, **settings):
        """ALTER SYSTEM SET login_notification.<name> for each, reload, wait."""
        self.cluster.alter_system({SETTING_PREFIX + name: value for name, value in settings.items()})

    def reset(self, quiet_timeout: float = 30):
        """Endpoint ok & empty, settings from postgresql.conf, worker idle, stats zero."""
        self.endpoint.reset()
        self.cluster.write_extra_conf({})
        self.cluster.reset_system()
        self.wait_quiet(quiet_timeout)
        self.reset_stats()
        self.endpoint.clear()

    # -- logins -----------------------------------------------------------
    def login(self, user: str = SUPERUSER, dbname: str = "postgres", *, tcp: bool = False,
              password: str | None = None, application_name: str | None = None) -> Login:
        """Log in, record what PostgreSQL stored for the session, log out."""
        started = time.time()
        with self.cluster.connect(user, dbname, tcp=tcp, password=password,
                                  application_name=application_name) as conn:
            finished = time.time()
            pid, port, stored_user, stored_db, app = conn.execute(
                "SELECT pid, client_port, usename::text, datname::text, application_name"
                " FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        return Login(user=stored_user, dbname=stored_db, started=started, finished=finished,
                     remote_host="127.0.0.1" if tcp else "[local]", pid=pid,
                     remote_port=port if tcp else None, application_name=app or None)

    def failed_login(self, user: str, dbname: str = "postgres", *, tcp: bool = True,
                     password: str | None = None, application_name: str | None = None) -> Login:
        """A login PostgreSQL refuses; returns what we know about it."""
        started = time.time()
        try:
            self.cluster.connect(user, dbname, tcp=tcp, password=password,
                                 application_name=application_name).close()
        except psycopg.OperationalError as e:
            error = e
        else:
            raise AssertionError(f"login of {user!r} unexpectedly succeeded")
        return Login(user=user, dbname=dbname, started=started, finished=time.time(),
                     remote_host="127.0.0.1" if tcp else "[local]",
                     remote_port=ANY_PORT if tcp else None,
                     application_name=application_name, error=error)

    # -- payloads ---------------------------------------------------------
    def server_info(self) -> dict:
        if self._server_info is None:
            self._server_info = {
                "host": socket.gethostname(),
                "port": self.cluster.port,
                "clusterName": self.cluster.show("cluster_name") or None,
                "systemIdentifier": self.cluster.system_identifier(),
                "version": self.cluster.server_version(),
            }
        return {**self._server_info,
                "inRecovery": self.cluster.sql_value("SELECT pg_is_in_recovery()")}

    def expected_payload(self, login: Login, status: str = "success", auth_method: str = "trust",
                         event: str = "login") -> dict:
        """The payload the extension must send for `login` (time fields excluded)."""
        return {
            "schemaVersion": 1, "eventId": ANY_EVENT_ID, "event": event, "status": status,
            "userName": login.user, "databaseName": login.dbname,
            "remoteHost": login.remote_host, "remotePort": login.remote_port,
            "applicationName": login.application_name, "authMethod": auth_method,
            "ssl": False, "sslVersion": None, "sslCipher": None,
            "backendPid": login.pid, "server": self.server_info(),
        }

    def assert_payload(self, payload: dict, login: Login, **expected_fields):
        assert_times(payload, login.started, login.finished)
        rest = {k: v for k, v in payload.items() if k not in ("time", "timestamp")}
        assert_json_equal(rest, self.expected_payload(login, **expected_fields))

    def wait_event(self, login: Login, status: str = "success", timeout: float = 15):
        """The request for this login's event: matched by user, db and status, and by
        backend pid when the login succeeded (so it is known)."""
        def matches(p):
            return ((p.get("userName"), p.get("databaseName"), p.get("status"))
                    == (login.user, login.dbname, status)
                    and (type(login.pid) is not int or p.get("backendPid") == login.pid))
        return self.endpoint.wait_for_payload(matches, timeout)

    def assert_delivered(self, login: Login, status: str = "success", auth_method: str = "trust",
                         timeout: float = 15):
        """Wait for the login's event and check the payload exactly; returns the request."""
        request = self.wait_event(login, status, timeout)
        self.assert_payload(request.payload, login, status=status, auth_method=auth_method)
        return request

    def assert_nothing_sent(self, seconds: float = 1.0, predicate=lambda r: True):
        self.endpoint.assert_none_within(predicate, seconds)

    # -- stats ------------------------------------------------------------
    def stats(self) -> dict:
        cur = self.cluster.admin.execute("SELECT * FROM login_notification.stats")
        row = cur.fetchone()
        assert row is not None and cur.fetchone() is None, "stats must have exactly one row"
        return dict(zip([c.name for c in cur.description], row))

    def wait_stats(self, predicate, timeout: float = 15, what: str = "stats") -> dict:
        """Poll stats until predicate(stats) holds; returns them."""
        last = {}

        def check():
            last.update(self.stats())
            return dict(last) if predicate(last) else None
        try:
            return wait_until(check, timeout, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; last stats: {last}") from None

    def wait_quiet(self, timeout: float = 60) -> dict:
        """Wait until nothing is queued, in flight or spooled."""
        return self.wait_stats(lambda s: s["queued"] == 0 and s["spooled"] == 0,
                               timeout, what="the worker to be idle")

    def reset_stats(self):
        self.cluster.sql("SELECT login_notification.reset_stats()")


def json_dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=2)

"""Fixtures: the fake Lambda endpoint, clusters with the extension, per-test reset.

One cluster serves the whole session (initdb + start costs ~1.5 s); every test
gets it back in a known state through the `ln` fixture: endpoint answering ok
with no recorded requests, settings as in postgresql.conf, worker idle, stats
zero.  Tests that need postmaster-only settings start their own cluster with
`make_cluster`.
"""

from __future__ import annotations

import pytest
from harness import FUNCTION_NAME, Harness, create_role, stop_cluster
from lambda_endpoint import LambdaEndpoint
from pgcluster import PgCluster

# Roles the tests log in as (name -> extra CREATE ROLE options).
ROLES = {
    "trusty": "",                       # TCP trust (pg_hba line below)
    "scram_user": "PASSWORD {pw}",      # TCP scram-sha-256
    "pw_user": "PASSWORD {pw}",         # TCP "password" method
    "plain_user": "PASSWORD {pw}",      # no privileges
    "monitor_user": "PASSWORD {pw} IN ROLE pg_monitor",
}
TRUST_TCP_ROLES = ["trusty", "ghost"]  # "ghost" does not exist
PASSWORD_METHOD_ROLES = ["pw_user"]


def main_hba() -> list[str]:
    return ([f"host all {role} 127.0.0.1/32 trust" for role in TRUST_TCP_ROLES]
            + [f"host all {role} 127.0.0.1/32 password" for role in PASSWORD_METHOD_ROLES]
            + ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"])


def base_settings(endpoint: LambdaEndpoint) -> dict:
    return {
        "login_notification.function_name": FUNCTION_NAME,
        "login_notification.region": "us-east-1",
        "login_notification.endpoint_url": endpoint.url,
    }


@pytest.fixture(scope="session")
def endpoint():
    with LambdaEndpoint() as ep:
        yield ep


@pytest.fixture(scope="session")
def make_cluster(endpoint):
    """Factory: a started cluster with the extension created; stopped at session end
    (or earlier by stop_cluster)."""
    clusters = []

    def make(settings: dict | None = None, hba: list[str] | None = None, name: str = "pg") -> PgCluster:
        cluster = PgCluster({**base_settings(endpoint), **(settings or {})}, hba or main_hba(), name=name)
        clusters.append(cluster)
        cluster.start()
        cluster.sql("CREATE EXTENSION login_notification")
        return cluster

    yield make
    for cluster in clusters:
        if cluster in PgCluster.live:
            stop_cluster(cluster)
        else:  # failed to start, or already stopped
            cluster.remove()


@pytest.fixture(scope="session")
def cluster(make_cluster):
    """The shared cluster, with the test roles."""
    cluster = make_cluster(name="main")
    for name, options in ROLES.items():
        create_role(cluster, name, options)
    return cluster


@pytest.fixture
def ln(cluster, endpoint):
    """The shared cluster and endpoint, reset to a known state for this test."""
    harness = Harness(cluster, endpoint)
    harness.reset()
    yield harness
    endpoint.release()  # never leave the worker waiting on a hung request


# -- diagnostics ----------------------------------------------------------
LOG_MARKS = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _check_server_logs(request):
    """Fail the test if any running cluster logged a crash while it ran."""
    request.node.stash[LOG_MARKS] = {c: c.log_size() for c in PgCluster.live}
    yield
    marks = request.node.stash[LOG_MARKS]
    crashes = [line for c in list(PgCluster.live) for line in c.crash_lines(marks.get(c, 0))]
    if crashes:
        pytest.fail("server log shows a crash:\n" + "\n".join(crashes))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the server log(s) of the test's time and the endpoint's requests."""
    report = yield
    if report.failed:
        marks = item.stash.get(LOG_MARKS, {})
        for cluster in list(PgCluster.live):
            report.sections.append((f"server log ({cluster.name}, port {cluster.port})",
                                    cluster.log_text(marks.get(cluster, 0))))
        endpoint = item.funcargs.get("endpoint") or getattr(item.funcargs.get("ln"), "endpoint", None)
        if endpoint is not None:
            report.sections.append(("fake Lambda endpoint requests", endpoint.describe()))
    return report

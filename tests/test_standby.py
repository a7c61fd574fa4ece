"""Hot standby: a streaming replica of a primary with the extension.

1. A standby made with pg_basebackup reports logins with "inRecovery": true, its own
   port and the primary's system identifier, and writes nothing (no spool, no files of ours).
2. After promotion it reports "inRecovery": false and keeps working.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import main_hba
from harness import Harness, stop_cluster
from pgcluster import PG_OS_USER, SUPERUSER, PgCluster, wait_until


class Standby(PgCluster):
    """A cluster started from a base backup of `primary`, streaming from it."""

    def __init__(self, primary: PgCluster):
        super().__init__(name="standby", env=primary.env)
        self.primary = primary

    def start(self) -> "Standby":
        self.base = Path(tempfile.mkdtemp(prefix="lnt-"))
        shutil.chown(self.base, PG_OS_USER, PG_OS_USER)
        self.base.chmod(0o700)
        self._run_pg("pg_basebackup", "-D", str(self.data_dir), "-h", str(self.primary.socket_dir),
                     "-p", str(self.primary.port), "-U", SUPERUSER, "-R", "-X", "stream", "-c", "fast")
        # The copied postgresql.conf names the primary's port and socket: override them.
        self.write_extra_conf({"port": self.port, "unix_socket_directories": str(self.socket_dir)})
        self._run_pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_path))
        PgCluster.live.add(self)
        return self

    def promote(self):
        self._run_pg("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.data_dir))


@pytest.fixture
def primary(make_cluster, endpoint):
    cluster = make_cluster(hba=["local replication all trust"] + main_hba(), name="primary")
    endpoint.reset()
    yield cluster
    stop_cluster(cluster)


@pytest.fixture
def standby(primary, endpoint):
    replica = Standby(primary).start()
    yield Harness(replica, endpoint)
    stop_cluster(replica)


def test_1_standby_reports_logins_in_recovery_and_writes_nothing(primary, standby):
    assert standby.cluster.sql_value("SELECT pg_is_in_recovery()") is True
    login = standby.login("postgres", application_name="on the standby")
    request = standby.assert_delivered(login)
    server = request.payload["server"]
    assert server["inRecovery"] is True
    assert server["port"] == standby.cluster.port != primary.port
    assert server["systemIdentifier"] == primary.system_identifier()
    stats = standby.wait_stats(lambda s: s["sent"] >= 1)
    assert stats["failed"] == 0 and stats["worker_pid"], stats
    assert not (standby.cluster.data_dir / "login_notification").exists()


def test_2_standby_survives_promotion(primary, standby):
    standby.assert_delivered(standby.login("postgres", application_name="before promotion"))
    standby.cluster.promote()
    wait_until(lambda: standby.cluster.sql_value("SELECT pg_is_in_recovery()") is False, 60,
               what="the promotion")
    login = standby.login("postgres", application_name="after promotion")
    request = standby.assert_delivered(login)
    assert request.payload["server"]["inRecovery"] is False
    assert standby.stats()["worker_pid"]

"""Throwaway PostgreSQL 15 clusters for the tests and the demo.

The harness runs as root, PostgreSQL refuses to, so initdb and pg_ctl run as
the ``postgres`` OS user (``runuser``) in a fresh temporary directory that it
owns.  The server gets a scrubbed environment with dummy AWS credentials only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "postgres"
SUPERUSER = "postgres"
EXTENSION = "login_notification"

# Dummy credentials only: the server must never see real ones.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_EC2_METADATA_DISABLED": "true",
}

# Log lines that mean a process of the server crashed.
CRASH_RE = re.compile(r"PANIC:|terminated by signal|server process \(PID \d+\)")

DEFAULT_HBA = ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"]
_GUC_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def conf_value(value) -> str:
    """Render a Python value as a postgresql.conf value."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate() until it returns a truthy value (returned); fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Disposable:
    """A context manager over start()/stop()/remove() that leaves nothing behind,
    even when start() fails or is interrupted (Ctrl-C)."""

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def remove(self):
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:  # also Ctrl-C while starting: leave nothing behind
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        self.stop()
        self.remove()


class PgCluster(Disposable):
    """One initdb'ed, running PostgreSQL cluster.

    settings: extra postgresql.conf settings (name -> value).
    hba: pg_hba.conf lines, first match wins.
    """

    live: set["PgCluster"] = set()  # started and not yet stopped

    def __init__(self, settings: dict | None = None, hba: list[str] | None = None,
                 preload: bool = True, name: str = "pg", env: dict | None = None):
        self.name = name
        self.env = dict(env or {})  # extra server environment (over AWS_TEST_ENV)
        self.settings = dict(settings or {})
        self.hba = list(hba or DEFAULT_HBA)
        self.preload = preload
        self.port = free_port()
        self.base: Path | None = None
        self._admin: psycopg.Connection | None = None

    # -- paths ------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    @property
    def extra_conf_path(self) -> Path:
        """A postgresql.conf include file that tests may write (then reload)."""
        return self.data_dir / "extra.conf"

    # -- lifecycle --------------------------------------------------------
    def start(self) -> "PgCluster":
        self.base = Path(tempfile.mkdtemp(prefix="lnt-"))
        shutil.chown(self.base, PG_OS_USER, PG_OS_USER)
        self.base.chmod(0o700)
        self._run_pg("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
                     "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", "-N")
        self._write_config()
        try:
            self._run_pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                         "-l", str(self.log_path))
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"cluster failed to start: {e.stderr}\n--- server log ---\n"
                               f"{self.log_text()}") from None
        PgCluster.live.add(self)
        return self

    def stop(self, mode: str = "fast"):
        """Stop the server (falls back to immediate); safe to call twice."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        PgCluster.live.discard(self)
        if self.base is None or not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._run_pg("pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data_dir))
        except subprocess.CalledProcessError:
            self._run_pg("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate",
                         "-D", str(self.data_dir), check=False)

    def restart(self, mode: str = "fast"):
        """Stop (cleanly with "fast") and start again on the same data directory."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._run_pg("pg_ctl", "restart", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir),
                     "-l", str(self.log_path))
        PgCluster.live.add(self)

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def forget_admin_session(self):
        """After a crash restart the admin session is gone; the next query reconnects."""
        if self._admin is not None:
            try:
                self._admin.close()
            finally:
                self._admin = None

    def remove(self):
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def _run_pg(self, program: str, *args: str, check: bool = True):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.base), "LANG": "C.UTF-8", **AWS_TEST_ENV,
               **self.env}
        command = ["runuser", "-u", PG_OS_USER, "--", "env", "-i",
                   *(f"{k}={v}" for k, v in env.items()), str(PG_BIN / program), *args]
        # Own process group, so that an interrupt or timeout kills runuser's child too.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=self.base, start_new_session=True) as process:
            try:
                stdout, stderr = process.communicate(timeout=120)
            except BaseException:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
        if check and process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command, stdout, stderr)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def _write_config(self):
        settings = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",
            "fsync": False,
            "log_connections": True,
            "log_line_prefix": "%m [%p] %b ",
            **({"shared_preload_libraries": EXTENSION} if self.preload else {}),
            **self.settings,
        }
        lines = [f"{name} = {conf_value(value)}" for name, value in settings.items()]
        lines.append("include_if_exists = 'extra.conf'")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# --- test harness ---\n" + "\n".join(lines) + "\n")
        (self.data_dir / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")
        self.write_extra_conf({})

    def write_extra_conf(self, settings: dict):
        """Replace the include file's settings (takes effect on reload())."""
        lines = [f"{name} = {conf_value(value)}\n" for name, value in settings.items()]
        self.extra_conf_path.write_text("".join(lines))
        shutil.chown(self.extra_conf_path, PG_OS_USER, PG_OS_USER)

    # -- server log -------------------------------------------------------
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except (OSError, TypeError):
            return 0

    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def crash_lines(self, since: int = 0) -> list[str]:
        return [line for line in self.log_text(since).splitlines() if CRASH_RE.search(line)]

    # -- connections ------------------------------------------------------
    def connect(self, user: str = SUPERUSER, dbname: str = "postgres", *, tcp: bool = False,
                password: str | None = None, application_name: str | None = None,
                connect_timeout: int = 10) -> psycopg.Connection:
        """A new autocommit session over TCP (127.0.0.1) or the Unix socket."""
        params = {"host": "127.0.0.1" if tcp else str(self.socket_dir), "port": self.port,
                  "user": user, "dbname": dbname, "connect_timeout": connect_timeout}
        if password is not None:
            params["password"] = password
        if application_name is not None:
            params["application_name"] = application_name
        return psycopg.connect(autocommit=True, **params)

    @property
    def admin(self) -> psycopg.Connection:
        """A long-lived superuser session (so admin queries cause no new logins)."""
        if self._admin is None or self._admin.closed:
            self._admin = self.connect()
        return self._admin

    def sql(self, query, params=None) -> list[tuple]:
        """Run one statement as superuser on the admin session; rows (or [])."""
        cur = self.admin.execute(query, params)
        return cur.fetchall() if cur.description else []

    def sql_value(self, query, params=None):
        rows = self.sql(query, params)
        assert len(rows) == 1 and len(rows[0]) == 1, f"expected one value from {query!r}: {rows}"
        return rows[0][0]

    # -- settings ---------------------------------------------------------
    def alter_system(self, settings: dict, reload: bool = True):
        """ALTER SYSTEM SET each setting (None = RESET), then reload and wait for it."""
        for name, value in settings.items():
            if not _GUC_NAME_RE.match(name):
                raise ValueError(f"bad setting name {name!r}")
            if value is None:
                self.sql(sql.SQL("ALTER SYSTEM RESET {}").format(sql.SQL(name)))
            else:
                if isinstance(value, bool):
                    value = "on" if value else "off"
                self.sql(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.SQL(name), sql.Literal(str(value))))
        if reload:
            self.reload()

    def reset_system(self):
        """ALTER SYSTEM RESET ALL and reload: back to postgresql.conf."""
        self.sql("ALTER SYSTEM RESET ALL")
        self.reload()

    def reload(self, timeout: float = 10):
        """pg_reload_conf() and wait until the reload has reached the backends.

        The postmaster re-reads the files and then signals its children, so once
        our own session has re-read them (pg_conf_load_time moves), new
        sessions and the background worker have been told as well.
        """
        before = self.sql_value("SELECT pg_conf_load_time()")
        self.sql("SELECT pg_reload_conf()")
        wait_until(lambda: self.sql_value("SELECT pg_conf_load_time()") > before,
                   timeout, what="configuration reload")

    def show(self, name: str) -> str:
        return self.sql_value("SELECT current_setting(%s)", [name])

    def system_identifier(self) -> str:
        return self.sql_value("SELECT system_identifier::text FROM pg_control_system()")

    def server_version(self) -> str:
        return self.show("server_version").split(" ")[0]

"""Benchmark: what login_notification costs a login, and how fast it delivers.

    make bench                        # builds the release package, then runs this
    .venv/bin/python bench/bench.py [--rounds 3] [--seconds 5] [--wait-load 0.8]

One run, on 127.0.0.1 only, with one cluster running at a time:

1. Connection rate and server CPU per login. Five configurations, interleaved
   (round 1: A B C D E, round 2: B C D E A, ...), each started fresh for its turn:
     A  no preload
     B  contrib auth_delay, auth_delay.milliseconds = 0 (a minimal C hook: the floor)
     C  login_notification sending to bench/fast_endpoint.py (202 at once)
     D  login_notification, endpoint down (connection refused)
     E  login_notification, endpoint hanging (accepts, never answers)
   Each turn runs `pgbench -n -C` with a `SELECT 1` script (every transaction is a new
   connection) at 1 and 4 clients, under trust and scram-sha-256. Server CPU per login is
   the postmaster's cutime+cstime (the finished backends it reaped) plus the worker's
   utime+stime, from /proc, divided by the logins. The hook's own cost comes from the
   extension's `login_notification.hook_timing()` (monotonic clock around our part).
2. Delivery, on a cluster with queue_size = 16384: a burst of 10,000 logins with the endpoint
   answering (delivered + dropped must be 10,000), then the worker's drain rate: ~5,000
   events queued while the endpoint holds its answers, released at once, timed until sent.
3. Memory: the queue's shared memory (pg_shmem_allocations) and the worker's
   resident memory (/proc/<pid>/status).

Prints a table and writes it, with the machine and the command, between the markers in
BENCHMARKS.md. Timings are never test assertions; the script fails only if a measurement
could not be taken. Everything it starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pgcluster import PG_BIN, PgCluster, wait_until  # noqa: E402

PYTHON = sys.executable
PACKAGE = ROOT / "target/release/login_notification-pg15"
DEFAULT_LIB = PACKAGE / "usr/lib/postgresql/15/lib/login_notification.so"
DEFAULT_SQL_DIR = PACKAGE / "usr/share/postgresql/15/extension"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "bench-password"
CONFIGS = ["A", "B", "C", "D", "E"]
CONFIG_NAMES = {
    "A": "no preload",
    "B": "auth_delay, 0 ms (C hook floor)",
    "C": "login_notification, endpoint ok",
    "D": "login_notification, endpoint down",
    "E": "login_notification, endpoint hanging",
}
CASES = [("trust", 1), ("trust", 4), ("scram-sha-256", 1), ("scram-sha-256", 4)]
USERS = {"trust": "bench_trust", "scram-sha-256": "bench_scram"}
HBA = [
    "local all all trust",
    "host all bench_trust 127.0.0.1/32 trust",
    "host all bench_scram 127.0.0.1/32 scram-sha-256",
]
COMMON_SETTINGS = {
    "log_connections": False,  # pgcluster turns it on; logging every login costs CPU
    "autovacuum": False,  # no reaped autovacuum workers in the postmaster's cutime
    "max_connections": 50,
}
BURST = 10_000
# pgbench connects once before its clients start: 3 clients x 3,333 + 1 = 10,000 logins.
BURST_CLIENTS, BURST_PER_CLIENT = 3, 3_333
# Drain-rate test: about 5,000 queued events (4 x 1,250 + pgbench's first connection).
DRAIN_CLIENTS, DRAIN_PER_CLIENT = 4, 1_250
DELIVERY_QUEUE = 16_384
MARK_BEGIN = "<!-- bench:begin (written by bench/bench.py; edit outside the markers) -->"
MARK_END = "<!-- bench:end -->"


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes ---------------------------------------------------------------------------

def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs cmd in its own process group; kills the group on timeout or Ctrl-C."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def proc_cpu_seconds(pid: int, children: bool) -> float:
    """utime+stime (or cutime+cstime) of a process from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime=14, stime=15, cutime=16, cstime=17
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return ((cutime + cstime) if children else (utime + stime)) / CLK_TCK


def proc_faults(pid: int, children: bool) -> int:
    """Page faults (minor + major) of a process, or of its reaped children, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # minflt=10, cminflt=11, majflt=12, cmajflt=13 (fields[0] is field 3)
    minflt, cminflt, majflt, cmajflt = (int(fields[i]) for i in (7, 8, 9, 10))
    return (cminflt + cmajflt) if children else (minflt + majflt)


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, RssShmem)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[name] = int(value.split()[0])
    return out


class Endpoint:
    """bench/fast_endpoint.py in its own process: an ok port and a hanging port."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.port = self.hang_port = 0

    def __enter__(self):
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "bench/fast_endpoint.py"), "--port", "0", "--hang-port", "0",
             "--watch-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[0] != "ready":
            raise RuntimeError(f"fast endpoint did not start: {line}")
        self.port, self.hang_port = int(line[1]), int(line[2])
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _call(self, method: str, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def stats(self) -> dict:
        return self._call("GET", "/_bench/stats")

    def hold(self):
        self._call("POST", "/_bench/hold")

    def release(self):
        self._call("POST", "/_bench/release")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid, children=False)


class DownPort:
    """A port on 127.0.0.1 that is bound (so nobody else takes it) but not listening:
    connecting to it is refused at once."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.sock.close()


class BenchCluster(PgCluster):
    """A PgCluster that is initdb'ed once and then started and stopped per turn."""

    def resume(self):
        self._run_pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                     "-l", str(self.log_path))
        PgCluster.live.add(self)

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def worker_pid(self) -> int | None:
        rows = self.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'login_notification'")
        return rows[0][0] if rows else None


# -- clusters ----------------------------------------------------------------------------

def make_cluster(config: str, lib_dir: Path, endpoint: Endpoint, down: DownPort,
                 extra: dict | None = None) -> BenchCluster:
    settings = dict(COMMON_SETTINGS)
    preload = config in ("C", "D", "E")
    if config == "B":
        settings.update({"shared_preload_libraries": "auth_delay", "auth_delay.milliseconds": 0})
    if preload:
        url_port = {"C": endpoint.port, "D": down.port, "E": endpoint.hang_port}[config]
        settings.update({
            # Load our copy of the release build, whatever is installed in $libdir.
            "dynamic_library_path": f"{lib_dir}:$libdir",
            "login_notification.function_name": "recorder",
            "login_notification.region": "us-east-1",
            "login_notification.endpoint_url": f"http://127.0.0.1:{url_port}",
        })
    settings.update(extra or {})
    return BenchCluster(settings=settings, hba=HBA, preload=preload, name=config)


def prepare(cluster: BenchCluster, extension_sql: str | None):
    cluster.sql("CREATE ROLE bench_trust LOGIN")
    cluster.sql(f"CREATE ROLE bench_scram LOGIN PASSWORD '{PASSWORD}'")
    if extension_sql is not None:
        # The packaged script of the same build as the library (not whatever version of the
        # extension is installed in the system's sharedir), run as CREATE EXTENSION would.
        cluster.sql("CREATE SCHEMA login_notification")
        cluster.sql("SET search_path = login_notification, pg_catalog")
        cluster.sql(extension_sql)
        cluster.sql("RESET search_path")


def load_extension_sql(sql_dir: Path) -> str:
    scripts = sorted(p for p in sql_dir.glob("login_notification--*.sql")
                     if p.name.count("--") == 1)
    if not scripts:
        raise SystemExit(f"no login_notification--VERSION.sql in {sql_dir}: run `make bench`")
    text = scripts[-1].read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    return (text.replace("MODULE_PATHNAME", "login_notification")
            .replace("@extschema@", "login_notification"))


def ln_counters(cluster: BenchCluster) -> dict:
    row = cluster.sql("SELECT s.enqueued, s.sent, s.failed, s.dropped, s.retried, s.hook_errors,"
                      " t.calls, t.total_ns, t.p50_ns, t.p99_ns FROM login_notification.stats s,"
                      " login_notification.hook_timing() t")[0]
    keys = ("enqueued", "sent", "failed", "dropped", "retried", "hook_errors", "hook_calls",
            "hook_ns", "hook_p50_ns", "hook_p99_ns")
    return dict(zip(keys, (int(v) if v is not None else None for v in row)))


# -- pgbench -----------------------------------------------------------------------------

def pgbench(cluster: BenchCluster, script: Path, user: str, clients: int,
            seconds: float | None = None, transactions: int | None = None) -> dict:
    cmd = [str(PG_BIN / "pgbench"), "-n", "-C", "-f", str(script), "-h", "127.0.0.1",
           "-p", str(cluster.port), "-U", user, "-c", str(clients), "-j", str(min(clients, 2))]
    if seconds is not None:
        cmd += ["-T", str(seconds)]
        timeout = seconds + 60
    else:
        cmd += ["-t", str(transactions)]
        timeout = 300
    cmd.append("postgres")
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": PASSWORD, "PGCONNECT_TIMEOUT": "10",
           "LANG": "C.UTF-8"}
    started = time.monotonic()
    res = run(cmd, timeout, env)
    elapsed = time.monotonic() - started
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed ({res.returncode}): {res.stderr}\n{res.stdout}")
    m = re.search(r"number of transactions actually processed: (\d+)", res.stdout)
    tps = re.search(r"tps = ([\d.]+) \(including reconnection times\)", res.stdout)
    if not m or not tps:
        raise RuntimeError(f"cannot parse pgbench output:\n{res.stdout}")
    return {"transactions": int(m.group(1)), "tps": float(tps.group(1)), "elapsed": elapsed}


@dataclass
class Sample:
    tps: float
    logins: int
    backend_us: float  # reaped backends' CPU per login
    worker_us: float  # worker CPU per login (0 without a worker)
    backend_faults: float  # page faults per reaped backend
    hook_ns: float | None  # our hook's average per call
    hook_p50: int | None = None  # median call (histogram bucket bound), this run only
    hook_p99: int | None = None
    counters: dict = field(default_factory=dict)


def measure(cluster: BenchCluster, script: Path, auth: str, clients: int, seconds: float,
            has_ext: bool) -> Sample:
    pm = cluster.postmaster_pid()
    wpid = cluster.worker_pid() if has_ext else None
    if has_ext:
        # The hook's quantiles count since the last reset: start this run's from zero.
        cluster.sql("SELECT login_notification.reset_stats()")
    before_ln = ln_counters(cluster) if has_ext else None
    cpu0 = proc_cpu_seconds(pm, children=True)
    faults0 = proc_faults(pm, children=True)
    w0 = proc_cpu_seconds(wpid, children=False) if wpid else 0.0
    r = pgbench(cluster, script, USERS[auth], clients, seconds=seconds)
    cpu1 = proc_cpu_seconds(pm, children=True)
    faults1 = proc_faults(pm, children=True)
    w1 = proc_cpu_seconds(wpid, children=False) if wpid else 0.0
    logins = r["transactions"] + 1  # pgbench's own first connection is a login too
    hook_ns, delta, quantiles = None, {}, {}
    if has_ext:
        after = ln_counters(cluster)
        quantiles = {"hook_p50": after.pop("hook_p50_ns"), "hook_p99": after.pop("hook_p99_ns")}
        delta = {k: after[k] - before_ln[k] for k in after}
        if delta["hook_calls"] > 0:
            hook_ns = delta["hook_ns"] / delta["hook_calls"]
        if cluster.worker_pid() != wpid:
            raise RuntimeError(f"{cluster.name}: the worker restarted during the run")
    return Sample(tps=r["tps"], logins=logins, backend_us=(cpu1 - cpu0) / logins * 1e6,
                  worker_us=(w1 - w0) / logins * 1e6,
                  backend_faults=(faults1 - faults0) / logins, hook_ns=hook_ns, counters=delta,
                  **quantiles)


# -- the parts of the run ----------------------------------------------------------------

def set_worker_policy(cluster: BenchCluster, policy: str | None):
    """Experiment only (--worker-policy): every thread of the worker to SCHED_<policy>."""
    if policy is None:
        return
    flag = {"other": "-o", "batch": "-b", "idle": "-i"}[policy]
    res = run(["chrt", "-a", flag, "-p", "0", str(cluster.worker_pid())], 30)
    if res.returncode != 0:
        raise RuntimeError(f"chrt failed: {res.stderr}")

def endpoint_ceiling(endpoint: Endpoint, seconds: float = 3.0) -> dict:
    res = run([PYTHON, str(ROOT / "bench/endpoint_load.py"), "--port", str(endpoint.port),
               "--connections", "16", "--seconds", str(seconds)], seconds + 30)
    if res.returncode != 0:
        raise RuntimeError(f"endpoint_load failed: {res.stderr}")
    return json.loads(res.stdout)


def connection_rate(args, clusters: dict[str, BenchCluster], script: Path) -> dict:
    """results[config][(auth, clients)] = [Sample per round]"""
    results: dict = {c: {case: [] for case in CASES} for c in CONFIGS}
    worker_rss: dict = {}
    for rnd in range(1, args.rounds + 1):
        # Rotate the order each round (A B C D E, B C D E A, …) so that no configuration
        # always runs first or right after a given other one.
        order = CONFIGS[(rnd - 1) % len(CONFIGS):] + CONFIGS[:(rnd - 1) % len(CONFIGS)]
        for config in order:
            cluster = clusters[config]
            cluster.resume()
            try:
                has_ext = config in ("C", "D", "E")
                if has_ext:
                    wait_until(cluster.worker_pid, 30, 0.1, what=f"{config}: worker")
                    set_worker_policy(cluster, args.worker_policy)
                pgbench(cluster, script, USERS["trust"], 4, seconds=1)  # warm-up
                for auth, clients in CASES:
                    s = measure(cluster, script, auth, clients, args.seconds, has_ext)
                    results[config][(auth, clients)].append(s)
                    hook = f" hook {s.hook_ns / 1000:.2f} us" if s.hook_ns is not None else ""
                    log(f"round {rnd} {config} {auth:13} c={clients}: {s.tps:8.1f} logins/s, "
                        f"backend {s.backend_us:7.0f} us/login, worker {s.worker_us:5.1f} "
                        f"us/login{hook} {s.counters if has_ext else ''}")
                if has_ext:
                    wpid = cluster.worker_pid()
                    worker_rss.setdefault(config, []).append(proc_status(wpid))
            finally:
                cluster.stop()
    return {"samples": results, "worker_rss": worker_rss}


def delivery(args, cluster: BenchCluster, endpoint: Endpoint, script: Path) -> dict:
    out: dict = {}
    wpid = cluster.worker_pid()
    cluster.sql("SELECT login_notification.reset_stats()")
    base_invokes = endpoint.stats()["invokes"]

    # 1. A burst of 10,000 logins while the endpoint answers.
    w_start = proc_cpu_seconds(wpid, children=False)
    started = time.monotonic()
    r = pgbench(cluster, script, USERS["trust"], BURST_CLIENTS, transactions=BURST_PER_CLIENT)
    logins_done = time.monotonic()

    def settled():
        c = ln_counters(cluster)
        return c if c["sent"] + c["failed"] >= c["enqueued"] else None

    c = wait_until(settled, 120, 0.02, what="burst delivered")
    done = time.monotonic()
    out["burst"] = {
        "logins": r["transactions"] + 1, "hook_calls": c["hook_calls"], "login_rate": r["tps"],
        "enqueued": c["enqueued"], "sent": c["sent"], "failed": c["failed"],
        "dropped": c["dropped"], "retried": c["retried"],
        "received": endpoint.stats()["invokes"] - base_invokes,
        "seconds_logins": logins_done - started, "seconds_all_sent": done - started,
        "lag_after_last_login": done - logins_done,
        "worker_cpu_us_per_event": (proc_cpu_seconds(wpid, children=False) - w_start)
        / max(c["sent"], 1) * 1e6,
    }
    log(f"burst: {out['burst']}")

    # 2. Drain rate: queue ~5,000 events while the endpoint holds its answers, release.
    cluster.sql("SELECT login_notification.reset_stats()")
    endpoint.hold()
    try:
        r = pgbench(cluster, script, USERS["trust"], DRAIN_CLIENTS, transactions=DRAIN_PER_CLIENT)
        wait_until(lambda: (lambda c: c["enqueued"] + c["dropped"] > r["transactions"])(
            ln_counters(cluster)), 30, 0.05, what="events queued")
        c0 = ln_counters(cluster)
        w0 = proc_cpu_seconds(wpid, children=False)
        e0 = endpoint.cpu_seconds()
    finally:
        endpoint.release()
    t0 = time.monotonic()
    c = wait_until(lambda: (lambda c: c if c["sent"] + c["failed"] >= c["enqueued"] else None)(
        ln_counters(cluster)), 120, 0.005, what="queue drained")
    t1 = time.monotonic()
    w1 = proc_cpu_seconds(wpid, children=False)
    e1 = endpoint.cpu_seconds()
    drained = c["sent"] - c0["sent"]
    out["drain"] = {
        "events": drained, "failed": c["failed"] - c0["failed"], "seconds": t1 - t0,
        "per_second": drained / (t1 - t0), "worker_cpu_us_per_event": (w1 - w0) / drained * 1e6,
        "endpoint_cpu_us_per_event": (e1 - e0) / drained * 1e6,
        "worker_cpu_share": (w1 - w0) / (t1 - t0),
    }
    log(f"drain: {out['drain']}")
    out["worker_status"] = proc_status(wpid)
    out["shmem"] = cluster.sql("SELECT size, allocated_size FROM pg_shmem_allocations"
                               " WHERE name = 'login_notification queue'")[0]
    return out


# -- report --------------------------------------------------------------------------------

def med(xs):
    return statistics.median(xs)


def fmt_range(xs, f="{:.3f}"):
    return f"{f.format(min(xs))}–{f.format(max(xs))}"


def report(args, meta: dict, rate: dict, ceiling: dict, deliv: dict, shmem_default) -> str:
    S = rate["samples"]
    lines = []
    add = lines.append
    add(f"Run of {meta['date']} — commit `{meta['commit']}`; {meta['machine']}; "
        f"PostgreSQL {meta['pg_version']}; library {meta['lib']}.")
    add(f"Load average (1/5/15 min) before: {meta['load_before']}, after: {meta['load_after']}. "
        f"Wall time {meta['wall']:.0f} s.")
    add("")
    if args.worker_policy:
        add(f"**Experiment: the worker's threads ran under SCHED_{args.worker_policy.upper()} "
            "(chrt -a), not as shipped.**")
        add("")
    add(f"Command: `{meta['command']}` ({args.rounds} rounds × 5 configurations × 4 cases × "
        f"{args.seconds} s of `pgbench -n -C` with `SELECT 1`, interleaved, the order rotated "
        "each round (A B C D E, B C D E A, …); "
        "medians over rounds, min–max in brackets).")
    add("")
    add("### Connection rate (logins/s, ratio to A)")
    add("")
    head = "| config | " + " | ".join(f"{a} c={c}" for a, c in CASES) + " |"
    add(head)
    add("|---" * (len(CASES) + 1) + "|")
    for config in CONFIGS:
        cells = []
        for case in CASES:
            xs = [s.tps for s in S[config][case]]
            a = [s.tps for s in S["A"][case]]
            if config == "A":
                cells.append(f"{med(xs):.0f} ({fmt_range(xs, '{:.0f}')})")
            else:
                per_round = [x / y for x, y in zip(xs, a)]
                cells.append(f"**{med(xs) / med(a):.3f}×** ({fmt_range(per_round)}) {med(xs):.0f}/s")
        add(f"| {config}: {CONFIG_NAMES[config]} | " + " | ".join(cells) + " |")
    add("")
    add("Ratio = median(config) / median(A); brackets: per-round ratio to the same round's A "
        "(the run's noise). A's row: logins/s (min–max).")
    add("")
    add("### Server CPU per login (µs; backends reaped by the postmaster + the worker)")
    add("")
    add(head)
    add("|---" * (len(CASES) + 1) + "|")
    for config in CONFIGS:
        cells = []
        for case in CASES:
            tot = [s.backend_us + s.worker_us for s in S[config][case]]
            w = [s.worker_us for s in S[config][case]]
            a = med([s.backend_us + s.worker_us for s in S["A"][case]])
            if config == "A":
                cells.append(f"{med(tot):.0f} ({fmt_range(tot, '{:.0f}')})")
            else:
                d = med(tot) - a
                wtxt = f", worker {med(w):.1f}" if config in ("C", "D", "E") else ""
                cells.append(f"{med(tot):.0f} ({d:+.0f} = {d / a * 100:+.1f}%{wtxt})")
        add(f"| {config} | " + " | ".join(cells) + " |")
    add("")
    add("Backends: the postmaster's cutime+cstime delta over the run (10 ms clock ticks, "
        "summed over thousands of logins); worker: its utime+stime. Brackets for A: min–max; "
        "others: difference to A's median, of which the worker.")
    add("")
    add("### Page faults per login (backends reaped by the postmaster)")
    add("")
    add(head)
    add("|---" * (len(CASES) + 1) + "|")
    for config in CONFIGS:
        cells = []
        for case in CASES:
            xs = [s.backend_faults for s in S[config][case]]
            a = med([s.backend_faults for s in S["A"][case]])
            if config == "A":
                cells.append(f"{med(xs):.1f} ({fmt_range(xs, '{:.1f}')})")
            else:
                cells.append(f"{med(xs):.1f} ({med(xs) - a:+.1f})")
        add(f"| {config} | " + " | ".join(cells) + " |")
    add("")
    add("The postmaster's cminflt+cmajflt delta over the run, per login: every backend is a "
        "fresh fork, so each page of code or shared memory a login touches for the first "
        "time costs a fault (1–3 µs here). Counted exactly, so this is how the extension's "
        "first-touch cost shows without the timing noise; brackets: A min–max, others the "
        "difference to A.")
    add("")
    add("### Our hook (login_notification.hook_timing(), µs per login: median / p99 / mean)")
    add("")
    add(head)
    add("|---" * (len(CASES) + 1) + "|")
    for config in ("C", "D", "E"):
        cells = []
        for case in CASES:
            ss = [s for s in S[config][case] if s.hook_ns is not None and s.hook_p50]
            if not ss:
                cells.append("–")
                continue
            p50 = [s.hook_p50 / 1000 for s in ss]
            p99 = [s.hook_p99 / 1000 for s in ss]
            mean = [s.hook_ns / 1000 for s in ss]
            cells.append(f"{med(p50):.1f} / {med(p99):.0f} / {med(mean):.1f} "
                         f"(median {fmt_range(p50, '{:.1f}')})")
        add(f"| {config} | " + " | ".join(cells) + " |")
    add("")
    add("Wall time around our part of the hook (monotonic clock), per turn from the "
        "extension's histogram (quantiles are the upper bound of a bucket ≈ 19% wide), then "
        "the median over rounds; brackets: the per-turn medians' min–max. The mean and p99 "
        "include the logins during which the backend was descheduled (two cores shared by "
        "pgbench, the postmaster, the backends and the worker).")
    add("")
    dropped = {c: sum(s.counters.get("dropped", 0) for case in CASES for s in S[c][case])
               for c in ("C", "D", "E")}
    sent = {c: sum(s.counters.get("sent", 0) for case in CASES for s in S[c][case])
            for c in ("C", "D", "E")}
    errors = sum(s.counters.get("hook_errors", 0) for c in ("C", "D", "E")
                 for case in CASES for s in S[c][case])
    add(f"During these runs: sent C={sent['C']}, D={sent['D']}, E={sent['E']}; dropped (queue "
        f"full, 1024) C={dropped['C']}, D={dropped['D']}, E={dropped['E']}; hook_errors={errors}.")
    add("")
    b, d = deliv["burst"], deliv["drain"]
    add("### Delivery (queue_size = 16384, endpoint: bench/fast_endpoint.py)")
    add("")
    add("| measure | value |")
    add("|---|---|")
    add(f"| fast endpoint's own ceiling (16 keep-alive connections, Python client) | "
        f"{ceiling['per_second']:.0f} requests/s |")
    add(f"| burst: logins (pgbench -C, {BURST_CLIENTS} clients × {BURST_PER_CLIENT} + its first "
        f"connection, trust) | {b['logins']} (seen by the hook: {b['hook_calls']}) at "
        f"{b['login_rate']:.0f}/s |")
    add(f"| burst: enqueued / sent / failed / dropped | {b['enqueued']} / {b['sent']} / "
        f"{b['failed']} / {b['dropped']} (received by the endpoint: {b['received']}) |")
    add(f"| burst: delivered + dropped | {b['sent'] + b['dropped']} of {b['logins']} |")
    add(f"| burst: all sent after | {b['seconds_all_sent']:.2f} s ({b['lag_after_last_login']:.2f} s "
        "after the last login) |")
    add(f"| burst: worker CPU per delivered event (events arriving one by one) | "
        f"{b['worker_cpu_us_per_event']:.0f} µs |")
    add(f"| **drain rate** ({d['events']} queued events, endpoint released) | "
        f"**{d['per_second']:.0f} events/s** ({d['seconds']:.2f} s) |")
    add(f"| worker CPU per delivered event (drain) | {d['worker_cpu_us_per_event']:.0f} µs "
        f"(worker busy {d['worker_cpu_share'] * 100:.0f}% of one core); endpoint "
        f"{d['endpoint_cpu_us_per_event']:.0f} µs |")
    add("")
    add("### Memory")
    add("")
    ws = deliv["worker_status"]
    add("| measure | value |")
    add("|---|---|")
    add(f"| shared memory, queue_size = 1024 (default) | {shmem_default[0]} bytes "
        f"(allocated {shmem_default[1]}) |")
    add(f"| shared memory, queue_size = {DELIVERY_QUEUE} | {deliv['shmem'][0]} bytes "
        f"(allocated {deliv['shmem'][1]}) |")
    rss = rate["worker_rss"].get("C", [])
    if rss:
        add("| worker VmRSS after the connection-rate runs (C, D, E; last round) | " + ", ".join(
            f"{c} {rate['worker_rss'][c][-1]['VmRSS'] / 1024:.1f} MB" for c in ("C", "D", "E")
            if c in rate["worker_rss"]) + " |")
    add(f"| **worker VmRSS after 20,000 deliveries** (VmHWM peak) | **{ws['VmRSS'] / 1024:.1f} MB** "
        f"({ws['VmHWM'] / 1024:.1f} MB): anonymous {ws.get('RssAnon', 0) / 1024:.1f}, file "
        f"{ws.get('RssFile', 0) / 1024:.1f}, shared memory {ws.get('RssShmem', 0) / 1024:.1f} MB |")
    add("")
    # Targets.
    add("### Targets")
    add("")
    add("| target | result | met |")
    add("|---|---|---|")
    # B does no work on a successful login: the spread of its per-round ratio to A is the
    # run's noise. A rate verdict closer than that is not claimed.
    b_lo = min(min(x / y for x, y in zip([s.tps for s in S["B"][case]],
                                         [s.tps for s in S["A"][case]])) for case in CASES)
    b_hi = max(max(x / y for x, y in zip([s.tps for s in S["B"][case]],
                                         [s.tps for s in S["A"][case]])) for case in CASES)
    noisy = b_hi - b_lo > 0.05
    for config in ("C", "D", "E"):
        cells, met = [], True
        for case in CASES:
            xs = [s.tps for s in S[config][case]]
            a = [s.tps for s in S["A"][case]]
            bb = [s.tps for s in S["B"][case]]
            ratio, bratio = med(xs) / med(a), med(bb) / med(a)
            hi = max(x / y for x, y in zip(xs, a))
            met &= (ratio >= 0.99 or hi >= 0.99) and ratio >= min(bratio, 1.0) - 0.01
            cells.append(f"{ratio:.3f} (B {bratio:.3f})")
        verdict = ("unresolved: B, which adds no work, ranged "
                   f"{b_lo:.2f}–{b_hi:.2f}× of A in this run" if noisy
                   else ("yes" if met else "NO"))
        add(f"| {config}: rate ≥ 0.99× A, no worse than B | ratios " + ", ".join(cells)
            + f" | {verdict} |")
    ss = [s for c in ("C", "D", "E") for case in CASES for s in S[c][case] if s.hook_p50]
    p50s = [s.hook_p50 for s in ss]
    means = [s.hook_ns for s in ss]
    add(f"| hook cost ≤ 20 µs per login (the typical login: the median call of each turn) | "
        f"per-turn medians {min(p50s) / 1000:.1f}–{max(p50s) / 1000:.1f} µs (means, with "
        f"descheduled logins, {min(means) / 1000:.1f}–{max(means) / 1000:.1f} µs) | "
        f"{'yes' if max(p50s) <= 20_000 else 'NO'} |")
    # The worker's own CPU per login is measured exactly (its utime+stime); the backends'
    # part is within the noise that B (no work) shows. The worker alone over 1 % is a NO.
    b_cpu = [(med([s.backend_us for s in S["B"][case]]) - med([s.backend_us for s in S["A"][case]]))
             / med([s.backend_us for s in S["A"][case]]) * 100 for case in CASES]
    cpu_noisy = max(abs(p) for p in b_cpu) > 1.0
    cpu_cells, cpu_verdicts = [], []
    for config in ("C", "D", "E"):
        pcts, wpcts = [], []
        for case in CASES:
            a = med([s.backend_us + s.worker_us for s in S["A"][case]])
            x = med([s.backend_us + s.worker_us for s in S[config][case]])
            pcts.append((x - a) / a * 100)
            wpcts.append(med([s.worker_us for s in S[config][case]]) / a * 100)
        if max(wpcts) > 1.0:
            cpu_verdicts.append(f"{config} NO")
        elif cpu_noisy:
            cpu_verdicts.append(f"{config} unresolved")
        else:
            cpu_verdicts.append(f"{config} {'yes' if max(pcts) <= 1.0 else 'NO'}")
        cpu_cells.append(f"{config} " + "/".join(f"{p:+.1f}" for p in pcts) + "% (worker alone "
                         + "/".join(f"{p:.1f}" for p in wpcts) + "%)")
    add("| server CPU per login ≤ 1% above A (trust c1/c4, scram c1/c4) | "
        + "; ".join(cpu_cells) + f"; B (no work) {'/'.join(f'{p:+.1f}' for p in b_cpu)}% | "
        + ", ".join(cpu_verdicts) + " |")
    add(f"| delivery ≥ 2,000 events/s | {d['per_second']:.0f} events/s | "
        f"{'yes' if d['per_second'] >= 2000 else 'NO'} |")
    add(f"| burst of 10,000: delivered = 10,000 | sent {b['sent']}, dropped {b['dropped']} | "
        f"{'yes' if b['sent'] == BURST else 'NO'} |")
    add(f"| worker resident memory ≤ 40 MB | {ws['VmRSS'] / 1024:.1f} MB (peak {ws['VmHWM'] / 1024:.1f}) | "
        f"{'yes' if ws['VmHWM'] <= 40 * 1024 else 'NO'} |")
    return "\n".join(lines)


def write_benchmarks_md(path: Path, table: str):
    block = f"{MARK_BEGIN}\n{table}\n{MARK_END}"
    if path.exists() and MARK_BEGIN in path.read_text():
        text = path.read_text()
        pre, rest = text.split(MARK_BEGIN, 1)
        post = rest.split(MARK_END, 1)[1] if MARK_END in rest else ""
        path.write_text(pre + block + post)
    else:
        path.write_text("# Benchmarks\n\n`make bench` (bench/bench.py) writes its table here.\n\n"
                        + block + "\n")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for_load(limit: float, timeout: float):
    deadline = time.monotonic() + timeout
    while (load := float(loadavg().split()[0])) >= limit:
        if time.monotonic() >= deadline:
            log(f"load {load} still ≥ {limit} after {timeout:.0f} s; running anyway")
            return
        log(f"waiting for the 1-minute load ({load}) to drop below {limit}")
        time.sleep(30)


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return (f"{os.cpu_count()} × {model}, {mem} MB RAM, Linux {platform.release()}, "
            f"{Path('/etc/debian_version').read_text().strip() if Path('/etc/debian_version').exists() else ''}")


def git_commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" + uncommitted src/ changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


# -- main ----------------------------------------------------------------------------------

def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="pgbench -T per case")
    parser.add_argument("--lib", type=Path, default=DEFAULT_LIB,
                        help="login_notification.so to measure (default: the release package)")
    parser.add_argument("--sql-dir", type=Path, default=DEFAULT_SQL_DIR)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="first wait (up to --wait-load-timeout s) for the 1-min load below this")
    parser.add_argument("--wait-load-timeout", type=float, default=1200)
    parser.add_argument("--worker-policy", choices=["other", "batch", "idle"], default=None,
                        help="experiment: put the worker's threads in this scheduling policy "
                             "(chrt -a) after each start")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (clusters run as the postgres user through runuser)")
    if not args.lib.exists():
        raise SystemExit(f"{args.lib} not found: `make bench` builds it "
                         "(cargo pgrx package --pg-config ...)")
    if args.wait_load is not None:
        wait_for_load(args.wait_load, args.wait_load_timeout)

    command = "make bench" if os.environ.get("MAKELEVEL") else " ".join(
        [".venv/bin/python", "bench/bench.py", *sys.argv[1:]])
    lib_bytes = args.lib.read_bytes()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(), "machine": machine(), "command": command,
        "lib": f"release build of {datetime.datetime.fromtimestamp(args.lib.stat().st_mtime, datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
               f"{len(lib_bytes) / 1e6:.1f} MB, sha256 {hashlib.sha256(lib_bytes).hexdigest()[:12]}",
        "load_before": loadavg(),
    }
    t_start = time.monotonic()
    extension_sql = load_extension_sql(args.sql_dir)

    # Ctrl-C and SIGTERM unwind through the ExitStack, which stops every cluster, the endpoint.
    signal.signal(signal.SIGTERM, _interrupt)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ln-bench-")))
        lib_dir = tmp / "lib"
        lib_dir.mkdir()
        shutil.copy2(args.lib, lib_dir / "login_notification.so")
        for p in (tmp, lib_dir):
            p.chmod(0o755)
        script = tmp / "select1.sql"
        script.write_text("SELECT 1;\n")
        script.chmod(0o644)

        endpoint = stack.enter_context(Endpoint())
        down = stack.enter_context(DownPort())
        log(f"fast endpoint on {endpoint.port} (hanging: {endpoint.hang_port}); down port {down.port}")
        ceiling = endpoint_ceiling(endpoint)
        log(f"fast endpoint ceiling: {ceiling}")

        clusters = {}
        for config in CONFIGS:
            cluster = stack.enter_context(make_cluster(config, lib_dir, endpoint, down))
            prepare(cluster, extension_sql if config in ("C", "D", "E") else None)
            if config == "C":
                shmem_default = cluster.sql(
                    "SELECT size, allocated_size FROM pg_shmem_allocations"
                    " WHERE name = 'login_notification queue'")[0]
            cluster.stop()
            clusters[config] = cluster
        log("clusters ready: " + ", ".join(f"{c}:{clusters[c].port}" for c in CONFIGS))

        rate = connection_rate(args, clusters, script)

        log("delivery")
        with make_cluster("C", lib_dir, endpoint, down, {
                "login_notification.queue_size": DELIVERY_QUEUE,
                "login_notification.timeout": 60_000}) as dcluster:
            prepare(dcluster, extension_sql)
            wait_until(dcluster.worker_pid, 30, 0.1, what="delivery worker")
            set_worker_policy(dcluster, args.worker_policy)
            pgbench(dcluster, script, USERS["trust"], 4, seconds=1)  # warm-up
            wait_until(lambda: (lambda c: c["sent"] >= c["enqueued"])(ln_counters(dcluster)),
                       30, 0.05, what="warm-up delivered")
            deliv = delivery(args, dcluster, endpoint, script)
            crashes = dcluster.crash_lines()
            for c in clusters.values():
                crashes += c.crash_lines()
            if crashes:
                log("crash lines in server logs:\n" + "\n".join(crashes))

    meta["load_after"] = loadavg()
    meta["wall"] = time.monotonic() - t_start
    meta["pg_version"] = run([str(PG_BIN / "postgres"), "--version"], 30).stdout.split(" ", 2)[-1].strip()
    table = report(args, meta, rate, ceiling, deliv, shmem_default)
    print("\n" + table + "\n", flush=True)
    if not args.no_write:
        write_benchmarks_md(args.output, table)
        log(f"wrote {args.output}")


if __name__ == "__main__":
    main()

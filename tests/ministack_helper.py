"""Run ministack (a local AWS emulator) with a recorder Lambda function.

ministack's default "local" executor runs Python functions in subprocesses, so
no Docker is needed.  It listens on 127.0.0.1 only, with the optional listeners
(SFTP, IoT MQTT) switched off, and keeps its scratch files in its own temp dir.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import boto3

from pgcluster import AWS_TEST_ENV, Disposable, free_port, wait_until

RECORDER_SOURCE = Path(__file__).with_name("recorder_lambda.py")
REGION = "us-east-1"
ACCOUNT_ID = "000000000000"  # ministack's default account


def recorder_zip() -> bytes:
    """A deployment package with recorder_lambda.py as handler.py."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", RECORDER_SOURCE.read_text())
    return buffer.getvalue()


class MiniStack(Disposable):
    def __init__(self, services: str = "lambda"):
        self.services = services  # ministack's SERVICES: a comma-separated list
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ministack-"))
        self.log_path = self.workdir / "ministack.log"
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "MiniStack":
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_TEST_ENV, GATEWAY_PORT=str(self.port), BIND_HOST="127.0.0.1",
                   TMPDIR=str(self.workdir), S3_DATA_DIR=str(self.workdir / "s3"),
                   SFTP_ENABLED="0", IOT_MTLS_ENABLED="0", SERVICES=self.services,
                   MINISTACK_REGION=REGION)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen([sys.executable, "-m", "ministack"], env=env,
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._healthy, timeout, interval=0.2, what=f"ministack health ({self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self._process.poll() is not None:
            raise RuntimeError(f"ministack exited with {self._process.returncode}:\n{self.log_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/_ministack/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        """Stop ministack and the function workers it spawned (its process group)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:  # our child's own session/process group: its Lambda workers
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(15)

    def remove(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- Lambda ---------------------------------------------------------------
    def lambda_client(self):
        return self.client("lambda")

    def client(self, service: str):
        """A boto3 client of `service` talking to this ministack."""
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=AWS_TEST_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_TEST_ENV["AWS_SECRET_ACCESS_KEY"])

    def create_recorder(self, name: str = "recorder") -> "Recorder":
        """Deploy the recorder function; returns a handle on the file it writes."""
        record_file = self.workdir / f"{name}.jsonl"
        record_file.touch()
        record_file.chmod(0o666)
        client = self.lambda_client()
        client.create_function(
            FunctionName=name, Runtime="python3.11", Handler="handler.handler",
            Role=f"arn:aws:iam::{ACCOUNT_ID}:role/login-notification-recorder",
            Code={"ZipFile": recorder_zip()}, Timeout=30,
            Environment={"Variables": {"RECORD_FILE": str(record_file)}})
        self.wait_active(name)
        return Recorder(name, record_file)

    def wait_active(self, name: str, timeout: float = 30):
        """Wait until the function `name` can be invoked."""
        client = self.lambda_client()
        wait_until(lambda: client.get_function(FunctionName=name)["Configuration"]["State"] == "Active",
                   timeout, interval=0.2, what=f"function {name} to become Active")


class Recorder:
    """The events a deployed recorder function has received."""

    def __init__(self, name: str, record_file: Path):
        self.name = name
        self.record_file = record_file

    def events(self) -> list:
        text = self.record_file.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 30, count: int = 1) -> list:
        """Wait until `count` recorded events satisfy predicate; returns them."""
        return wait_until(lambda: (lambda m: m if len(m) >= count else None)(
            [e for e in self.events() if predicate(e)]), timeout, interval=0.1,
            what=f"{count} event(s) at {self.name}: have {self.events()}")

    def clear(self):
        self.record_file.write_text("")

"""The receiving side, deployed into ministack: the notifier Lambda function (the Rust
binary from notifier/, run as a provided.al2023 `bootstrap`), the SNS topic it
publishes to, and an SQS queue subscribed to the topic that stands in for the
operator's mailbox.  Used by the end-to-end test and by `make demo`.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ministack_helper import ACCOUNT_ID, MiniStack
from pgcluster import wait_until

REPO = Path(__file__).resolve().parent.parent
# ministack's SERVICES for the whole chain (logs: the function's output).
SERVICES = "lambda,sns,sqs,logs"
BODY_LABEL_WIDTH = 20  # LABEL_WIDTH in notifier/src/body.rs


def build_notifier() -> Path:
    """Build the notifier (a no-op when it is up to date); the binary's path."""
    subprocess.run(["cargo", "build", "--quiet", "-p", "notifier"], cwd=REPO, check=True)
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "notifier"


def bootstrap_zip(binary: Path) -> bytes:
    """A provided.al2023 deployment package: the binary as an executable `bootstrap`."""
    entry = zipfile.ZipInfo("bootstrap")
    entry.external_attr = (stat.S_IFREG | 0o755) << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(entry, binary.read_bytes(), compresslevel=1)
    return buffer.getvalue()


@dataclass
class Notification:
    """One SNS message as it arrived in the queue."""

    subject: str
    body: str
    attributes: dict  # name -> string value

    def fields(self) -> dict:
        """The body's `label   value` lines (after the headline and a blank line)."""
        return {line[:BODY_LABEL_WIDTH].strip(): line[BODY_LABEL_WIDTH:] for line in self.body.splitlines()[2:]}


class NotifierStack:
    """Topic, queue, subscription and the notifier function in one ministack."""

    def __init__(self, ministack: MiniStack, name: str = "login-notifier", environment: dict | None = None):
        self.ministack, self.name = ministack, name
        self.sns, self.sqs = ministack.client("sns"), ministack.client("sqs")
        self.topic_arn = self.sns.create_topic(Name=f"{name}-topic")["TopicArn"]
        self.queue_url = self.sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)
        variables = {"TOPIC_ARN": self.topic_arn, "AWS_ENDPOINT_URL": ministack.url, **(environment or {})}
        ministack.lambda_client().create_function(
            FunctionName=name, Runtime="provided.al2023", Handler="bootstrap",
            Architectures=["x86_64"], Role=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}",
            Code={"ZipFile": bootstrap_zip(build_notifier())}, Timeout=30,
            Environment={"Variables": variables})
        ministack.wait_active(name)
        self.received: list[Notification] = []

    def receive(self) -> list[Notification]:
        """Fetch what has arrived in the queue since the last call (and keep it)."""
        while True:
            messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                                WaitTimeSeconds=0).get("Messages", [])
            if not messages:
                return self.received
            for message in messages:
                envelope = json.loads(message["Body"])
                attributes = {name: value.get("Value")
                              for name, value in (envelope.get("MessageAttributes") or {}).items()}
                self.received.append(Notification(envelope.get("Subject") or "", envelope["Message"], attributes))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])

    def wait_for(self, predicate, timeout: float = 60, count: int = 1) -> list[Notification]:
        """Wait until `count` received notifications satisfy predicate; returns them."""
        def matching():
            found = [n for n in self.receive() if predicate(n)]
            return found if len(found) >= count else None
        return wait_until(matching, timeout, interval=0.2,
                          what=f"{count} notification(s) in the queue; have {self.received}")

    def function_log(self) -> str:
        """What the function printed (its CloudWatch Logs group), oldest first."""
        logs = self.ministack.client("logs")
        try:
            events = logs.filter_log_events(logGroupName=f"/aws/lambda/{self.name}")["events"]
        except logs.exceptions.ResourceNotFoundException:
            return ""
        return "\n".join(event["message"].rstrip("\n") for event in events)

    def wait_log(self, text: str, timeout: float = 30) -> str:
        """Wait until the function's log contains `text`; returns the log."""
        return wait_until(lambda: (lambda log: log if text in log else None)(self.function_log()),
                          timeout, interval=0.2, what=f"{text!r} in the function's log")

"""The Lambda function the ministack test and the demo deploy.

It appends every event it receives, as one JSON line, to the file named by the
RECORD_FILE environment variable, and prints a one-line notification (which
ends up in the emulator's log, like CloudWatch Logs on AWS).
"""

import json
import os


def handler(event, context):
    with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as record:
        record.write(json.dumps(event, ensure_ascii=False) + "\n")
    if isinstance(event, dict):
        print(f"login notification: {event.get('status')} login of {event.get('userName')!r} "
              f"to {event.get('databaseName')!r} from {event.get('remoteHost')}")
    return {"recorded": True}

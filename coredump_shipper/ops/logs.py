"""Log set-up: human text or JSON lines, one logger per module.

JSON lines carry the event name and structured fields passed through `extra=`; both formats keep the
`[coredump] '<file>' has been uploaded to 's3://<bucket>/<key>'` message that alerting on the original
script's output relies on.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = (
    "event",
    "file",
    "key",
    "bytes",
    "bytes_sent",
    "duration_seconds",
    "attempt",
    "error",
    "reason",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore at debug level logs request headers (signatures): keep it quiet whatever our level.
    for noisy in ("botocore", "aiobotocore", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""Logging set-up: text or JSON lines; the extra fields a line may carry."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Extra fields (passed with ``extra=``) that both formats print when a record has them.
FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "prediction_id",
    "model",
    "outcome",
    "consumer",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

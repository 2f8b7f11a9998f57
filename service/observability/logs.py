"""Logging set-up: text or JSON lines; the extra fields a line may carry."""

from __future__ import annotations

import json
import logging
import re
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


# Control characters (and Unicode's line and paragraph separators): a URL path holding
# %0a would otherwise start a line of its own, a forged one.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TextFormatter(logging.Formatter):
    """One line per record: control characters in the message are written escaped (a
    traceback, which the formatter adds itself, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escaped, record.message)
        return super().formatMessage(record)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

"""The server's log lines: text for terminals (the default) or one JSON object per line."""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
# Fields a request's log record carries (logging `extra=`); JSON lines hold those present.
REQUEST_FIELDS = (
    "transport",
    "method",
    "route",
    "status",
    "inputs",
    "tokens",
    "ms",
    "request_id",
)


_ID_PREFIX = os.urandom(8).hex()  # drawn once per process; then a counter
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """32 hex digits, unique within the process and, by its random half, across processes (a
    uuid4 read the OS's random source each time: 3.5 us a request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def info_at(
    logger: logging.Logger, finished: float, msg: str, *args: object, extra: dict[str, object]
) -> None:
    """logger.info(msg, *args, extra=extra), dated `finished` (a time.time()) rather than now:
    a request's line is written after its reply, in a batch (backlog.Backlog)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    record = logger.makeRecord(logger.name, logging.INFO, "", 0, msg, args, None, extra=extra)
    record.created = finished
    record.msecs = int((finished - int(finished)) * 1000) + 0.0  # as LogRecord computes it
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """{"time", "level", "message", and the request fields} on one line."""

    def format(self, record: logging.LogRecord) -> str:
        utc = time.gmtime(record.created)
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", utc) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for field in REQUEST_FIELDS:
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    """Send warnings (and the server's info lines) to stderr in `log_format`.

    Records skip what neither format prints (the caller's file and line, the thread's and the
    process's names): a request's line took 21 us to log with them, 15 without."""
    logging._srcfile = None  # type: ignore[attr-defined]  # the logging docs' own advice
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("encoderfile.serve").setLevel(logging.INFO)

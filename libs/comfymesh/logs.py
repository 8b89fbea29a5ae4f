"""Structured logs: one JSON object per line (or plain text), the same shape in every service.

Records are formatted and written by a background thread (QueueHandler/QueueListener): a log call
on a request's path costs an enqueue, not a JSON encode and a blocking write to a pipe.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from typing import Any


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", record.name),
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    """For a person at a terminal: time, service, level and message, then the record's fields as key=value."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s {service} %(levelname)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", {})
        return f"{line}  " + " ".join(f"{key}={value}" for key, value in fields.items()) if fields else line


class _Enqueue(logging.handlers.QueueHandler):
    """Hands records over as they are: the listener's formatter (JSON, traceback in "exc") does the rest."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """Write out what is queued and stop the listener thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def setup_logging(service: str, level: str = "INFO", as_json: bool | None = None) -> logging.Logger:
    """Configure the root logger once per process and return the service's logger. `as_json` None: text when
    stderr is a terminal (a person reads it), JSON otherwise (a collector does)."""
    global _listener
    handler = logging.StreamHandler(sys.stderr)
    if as_json is None:
        as_json = not sys.stderr.isatty()
    handler.setFormatter(_JsonFormatter() if as_json else _TextFormatter(service))
    _stop_listener()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    atexit.unregister(_stop_listener)  # once, however often logging is set up (a listener stops only once)
    atexit.register(_stop_listener)  # flushes what is queued on a normal exit
    root = logging.getLogger()
    root.handlers[:] = [_Enqueue(records)]
    root.setLevel(level.upper())
    return logging.getLogger(service)


def log_fields(**fields: Any) -> dict[str, Any]:
    """`logger.info("msg", extra=log_fields(job=..., node=...))` adds fields to the JSON line."""
    return {"fields": fields}

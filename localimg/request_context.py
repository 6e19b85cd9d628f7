"""Who and which request the current code runs for: context variables set by the HTTP middleware, read by the
engine (fair share per client) and by the log filter (every log line carries the request id).

Context variables are per task, not per process, so two apps in one process (tests, Ray replicas) do not mix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

request_id: ContextVar[str] = ContextVar("localimg_request_id", default="-")
# The fairness identity: a short hash of the API key when keys are configured, else the remote address.
client_id: ContextVar[str] = ContextVar("localimg_client_id", default="anonymous")


@contextmanager
def serving(request_ids: str) -> Iterator[None]:
    """Log lines written inside carry `request_ids` (code run for requests outside their own task: the worker)."""
    token = request_id.set(request_ids)
    try:
        yield
    finally:
        request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record (the one of the current context unless the record brings its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True

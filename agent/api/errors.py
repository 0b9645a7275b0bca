"""What a request that failed unexpectedly answers, and what the log says about it: a full
disk gets `storage_full` (HTTP 507) and one line, anything else `internal_error` (HTTP 500)
and its traceback."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from agent.api.schemas import INTERNAL_ERROR_MESSAGE, error_response
from agent.gateway import StorageFull
from agent.storage import STORAGE_FULL_MESSAGE, log_storage_full, storage_full_cause

log = logging.getLogger("qqrag.server")


@dataclass(frozen=True)
class Failure:
    status: int
    code: str
    message: str

    def body(self, **extra: Any) -> dict[str, Any]:
        """The `error` object: of the JSON envelope, or of an SSE `error` event."""
        return {"code": self.code, "message": self.message, **extra}

    def response(self, **extra: Any) -> JSONResponse:
        return error_response(self.status, self.code, self.message, **extra)


INTERNAL = Failure(500, "internal_error", INTERNAL_ERROR_MESSAGE)
STORAGE_FULL = Failure(StorageFull.STATUS, StorageFull.CODE, STORAGE_FULL_MESSAGE)
"""What the quota gate refuses with `StorageFull`, for a full disk met further on."""


def storage_failure(exc: BaseException, what: str, data_dir: Path) -> Failure | None:
    """`STORAGE_FULL`, logged in one line as `what` failed, when `exc` says the disk is full;
    None otherwise."""
    full = storage_full_cause(exc)
    if full is None:
        return None
    log_storage_full(log, what, full, data_dir)
    return STORAGE_FULL


def failure(exc: BaseException, what: str, data_dir: Path) -> Failure:
    """What to answer for `exc`, logged once as `what` failed."""
    if (failed := storage_failure(exc, what, data_dir)) is not None:
        return failed
    log.error("%s", what, exc_info=exc)
    return INTERNAL

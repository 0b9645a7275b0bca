"""The data folder as a dependency: writable, with space to spare; and the errors that say a
write failed for want of space.

Every turn writes there (quota, conversation, audit), so a full disk fails every turn:
readiness probes the folder like any other dependency, and a turn that fails for it is
answered `storage_full`, not as an internal error.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from tools.health import Health

STORAGE_FULL_MESSAGE = "服务器存储空间已满，暂时无法回答，请联系管理员。"
"""What users see when their turn could not be stored for want of space."""

_FREE_SPACE_FIX = (
    "清理该磁盘（旧日志、备份、不用的 Docker 镜像等）；腾出空间后服务自动恢复，无需重启"
)

_MB = 1024 * 1024
# One page: a disk that cannot take this cannot take a turn either.
_PROBE = b"\0" * 4096
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_full_cause(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain that says the disk (or a quota on it) is full: SQLite's
    SQLITE_FULL ("database or disk is full") or an OSError ENOSPC or EDQUOT; None if none does.

    The chain counts: an error raised while handling a full disk (a ROLLBACK failing in
    turn, a wrapper) carries it as its context or cause.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Errors sqlite3 raises without a code of SQLite's (a closed connection) lack it.
        if getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return current
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def log_storage_full(
    logger: logging.Logger, what: str, cause: BaseException, data_dir: Path
) -> None:
    """One line, without the traceback: cause and fix are the same for every turn, and a
    traceback per turn would bury them."""
    logger.error(
        "%s: the disk of the data folder %s is full (%s); free space there, turns resume "
        "without a restart",
        what,
        data_dir.resolve(),
        cause,
    )


def check_storage(folder: Path, min_free_mb: int) -> Health:
    """Down unless a small file can be written, flushed to the disk and removed in `folder`,
    and the disk keeps `min_free_mb` free: what every turn needs of it."""
    folder = folder.resolve()
    try:
        # Flushed and fsynced: some filesystems (NFS, thin-provisioned volumes) report a full
        # disk only when the data reaches it.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-") as probe:
            probe.write(_PROBE)
            probe.flush()
            os.fsync(probe.fileno())
        free_mb = shutil.disk_usage(folder).free // _MB
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            return Health.down(
                f"数据目录 {folder} 所在磁盘已满（{exc.strerror}），对话、配额和审计记录都写不进去",
                _FREE_SPACE_FIX,
            )
        return Health.down(
            f"数据目录 {folder} 不可写：{exc.strerror}",
            "用 QQRAG_DATA_DIR 指向可写目录，或修改目录权限",
        )
    if free_mb < min_free_mb:
        return Health.down(
            f"数据目录 {folder} 所在磁盘只剩 {free_mb} MB，"
            f"低于 QQRAG_MIN_FREE_MB（{min_free_mb} MB），很快就会写不进去",
            f"{_FREE_SPACE_FIX}；或调低 QQRAG_MIN_FREE_MB",
        )
    return Health.up(f"{folder} 可写，剩余 {free_mb} MB")


async def storage_health(folder: Path, min_free_mb: int) -> Health:
    # The fsync may wait on a busy disk: off the event loop, where the turns run.
    return await asyncio.to_thread(check_storage, folder, min_free_mb)

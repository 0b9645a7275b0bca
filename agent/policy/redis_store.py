"""Quotas and the in-flight bound in Redis, shared by every replica of the service.

`RedisQuotaStore` keeps the token buckets and daily budgets of a `QuotaStore` (same limits, same
decisions, same Chinese messages as the SQLite one); `RedisAdmission` bounds turns in flight
across processes the way `LocalAdmission` does within one; `RedisThreadLocks` keeps each conversation to one turn at a
time across them. Every read-modify-write is one Lua script, so it is atomic
however many processes share the Redis, and every key carries a TTL, so nothing grows forever.

While Redis is unreachable the service keeps answering: quotas let requests through and the
in-flight bound falls back to a per-process one, each with a logged warning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import tzinfo

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError
from redis.lock import Lock
from redis.retry import Retry

from agent.policy.admission import Admission, LocalAdmission
from agent.policy.quota import CHINA_TZ, QuotaLimits, QuotaStore, Scope, Subject
from agent.threads import KeyedLocks, poll, time_left, wait_until
from tools.health import Health

log = logging.getLogger(__name__)

# An idle bucket is full again after 60 s whatever its rate, and a missing bucket counts as full.
_BUCKET_TTL_MS = 61_000
# A day's counter outlives its day by an hour: processes whose clocks differ a little still agree.
_DAY_GRACE_S = 3600
# Admission calls run on the event loop: a Redis that hangs may stall it only briefly.
_SOCKET_TIMEOUT_S = 0.5

# KEYS: (bucket, daily counter) per subject. ARGV: now, (rpm, daily budget) per subject, then
# the bucket TTL in ms.
# Returns {0} admitted, {1, i} subject i's daily budget is spent, {2, i, wait} its bucket is
# empty (the longest wait wins; the user, listed first, wins ties).
_TAKE = """
local now = tonumber(ARGV[1])
local subjects = #KEYS / 2
for i = 1, subjects do
  local budget = tonumber(ARGV[2 * i + 1])
  if budget > 0 and tonumber(redis.call('GET', KEYS[2 * i]) or '0') >= budget then
    return {1, i}
  end
end
local levels = {}
local refused, longest = 0, 0
for i = 1, subjects do
  local rpm = tonumber(ARGV[2 * i])
  if rpm > 0 then
    local level = rpm
    local bucket = redis.call('HMGET', KEYS[2 * i - 1], 'tokens', 'at')
    if bucket[1] then
      -- Multiplying before dividing keeps whole refills exact, as QuotaStore does.
      local refill = math.max(0, now - tonumber(bucket[2])) * rpm / 60
      level = math.min(rpm, tonumber(bucket[1]) + refill)
    end
    if level < 1 then
      local wait = math.ceil((1 - level) * 60 / rpm)
      if wait > longest then refused, longest = i, wait end
    end
    levels[i] = level
  end
end
if refused > 0 then
  return {2, refused, longest}
end
for i, level in pairs(levels) do
  redis.call('HSET', KEYS[2 * i - 1], 'tokens', string.format('%.17g', level - 1), 'at', ARGV[1])
  redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[#ARGV])
end
return {0}
"""

# KEYS: the slots (a sorted set of slot id → lease end). ARGV: now, lease end, limit, slot id,
# key TTL in ms. Expired leases (their process died) are dropped before counting.
_ENTER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class SharedStateError(RuntimeError):
    """Redis is chosen but cannot be used; the message is Chinese and names the setting."""


def _unreachable(exc: BaseException) -> str:
    return f"无法连接 Redis（请检查 QQRAG_REDIS_URL）：{exc}"


async def redis_health(client: redis.Redis) -> Health:
    """Up when Redis answers a PING; degraded otherwise, since every Redis-backed policy falls
    back to a per-process one and turns go on."""
    try:
        # A PING blocks for up to the socket timeout: not on the event loop.
        await asyncio.to_thread(client.ping)
    except redis.RedisError as exc:
        return Health.degraded(
            f"{_unreachable(exc)}；问答照常，但暂不检查配额，并发上限和会话锁改由各进程各自把关",
            "确认 Redis 正在运行、QQRAG_REDIS_URL 指向它；恢复后自动改回共享状态",
        )
    return Health.up()


def connect_redis(url: str) -> redis.Redis:
    """A client for `url`, checked with a PING; raises `SharedStateError` naming the setting."""
    if not url.strip():
        raise SharedStateError(
            "QQRAG_SHARED_STATE=redis 时必须设置 QQRAG_REDIS_URL（如 redis://redis:6379/0）"
        )
    try:
        client = redis.Redis.from_url(
            url.strip(),
            decode_responses=True,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            # One retry covers a pooled connection the server closed; more would stall the loop.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise SharedStateError(_unreachable(exc)) from exc
    return client


class RedisQuotaStore(QuotaStore):
    """The quotas in Redis: one quota for every process sharing the Redis."""

    shared = True

    def __init__(
        self,
        client: redis.Redis,
        limits: QuotaLimits,
        *,
        prefix: str = "qqrag:",
        day_tz: tzinfo = CHINA_TZ,
    ) -> None:
        super().__init__(limits, day_tz)
        self._client = client
        self._prefix = f"{prefix}quota:"
        self._take_script = client.register_script(_TAKE)

    def _take(
        self, tenant: str, subjects: list[Subject], now: float, day: str
    ) -> tuple[Subject, int | None] | None:
        keys: list[str] = []
        args: list[str | int] = [repr(now)]
        for subject in subjects:
            keys.append(self._bucket_key(tenant, subject.scope, subject.id))
            keys.append(self._daily_key(tenant, day, subject.scope, subject.id))
            args += [subject.rpm, subject.daily_tokens]
        args.append(_BUCKET_TTL_MS)
        try:
            verdict = self._take_script(keys=keys, args=args)
        except redis.RedisError:
            log.warning("Redis unreachable: request admitted without a quota check", exc_info=True)
            return None
        if verdict[0] == 0:
            return None
        subject = subjects[verdict[1] - 1]
        return subject, None if verdict[0] == 1 else int(verdict[2])

    def _charge(
        self, tenant: str, subjects: list[Subject], tokens: int, now: float, day: str
    ) -> None:
        ttl = self._seconds_to_midnight(now) + _DAY_GRACE_S
        with self._client.pipeline(transaction=True) as pipe:
            for subject in subjects:
                key = self._daily_key(tenant, day, subject.scope, subject.id)
                pipe.incrby(key, tokens)
                pipe.expire(key, ttl)
            try:
                pipe.execute()
            except redis.RedisError:
                log.warning("Redis unreachable: %d tokens not charged", tokens, exc_info=True)

    def _used(self, tenant: str, scope: Scope, subject_id: str, day: str) -> int:
        value = self._client.get(self._daily_key(tenant, day, scope, subject_id))
        return int(value) if value else 0

    async def health(self) -> Health:
        return await redis_health(self._client)

    def close(self) -> None:
        """Close the Redis client, shared with the service's `RedisAdmission` (done by then)."""
        self._client.close()

    def _bucket_key(self, tenant: str, scope: Scope, subject_id: str) -> str:
        return f"{self._prefix}{tenant}:rate:{scope}:{subject_id}"

    def _daily_key(self, tenant: str, day: str, scope: Scope, subject_id: str) -> str:
        return f"{self._prefix}{tenant}:daily:{day}:{scope}:{subject_id}"


class RedisAdmission(Admission):
    """At most `limit` turns at a time across every process sharing the Redis; 0: unlimited.

    Each slot is a lease: this process renews its slots' leases while it holds them, so the
    slots of a process that died free themselves after `lease_s`.
    """

    def __init__(
        self, client: redis.Redis, limit: int, *, prefix: str = "qqrag:", lease_s: float = 30.0
    ) -> None:
        super().__init__(limit)
        self.lease_s = lease_s
        self._client = client
        self._key = f"{prefix}admission"
        self._enter = client.register_script(_ENTER)
        # Slot ids held here; None marks a slot of the local bound taken while Redis was away.
        self._held: list[str | None] = []
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._local = LocalAdmission(limit)

    @property
    def in_flight(self) -> int:
        """Turns in flight in every process (live leases)."""
        return int(self._client.zcount(self._key, f"({time.time()!r}", "+inf"))

    def try_enter(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        slot = uuid.uuid4().hex
        lease_ms = math.ceil(self.lease_s * 1000)
        try:
            entered = bool(
                self._enter(
                    keys=[self._key],
                    args=[repr(now), repr(now + self.lease_s), self.limit, slot, lease_ms],
                )
            )
        except redis.RedisError:
            log.warning("Redis unreachable: in-flight bound is per process", exc_info=True)
            if not self._local.try_enter():
                return False
            with self._lock:
                self._held.append(None)
            return True
        if entered:
            with self._lock:
                self._held.append(slot)
                if self._renewer is None:
                    self._renewer = threading.Thread(
                        target=self._renew, name="qqrag-admission-leases", daemon=True
                    )
                    self._renewer.start()
        return entered

    def leave(self) -> None:
        with self._lock:
            if not self._held:
                raise RuntimeError("leave() without a matching try_enter()")
            # Slots are interchangeable: whichever is freed, the count comes out right.
            slot = self._held.pop()
        if slot is None:
            self._local.leave()
            return
        try:
            self._client.zrem(self._key, slot)
        except redis.RedisError:
            log.warning("Redis unreachable: a slot frees when its lease ends", exc_info=True)

    async def health(self) -> Health:
        return await redis_health(self._client)

    def _renew(self) -> None:
        """Extend this process's leases every third of a lease; ends when none is held."""
        while True:
            time.sleep(self.lease_s / 3)
            with self._lock:
                slots = [slot for slot in self._held if slot is not None]
                if not slots:
                    self._renewer = None
                    return
            until = time.time() + self.lease_s
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    # XX: a slot freed meanwhile (or expired) is not brought back.
                    pipe.zadd(self._key, dict.fromkeys(slots, until), xx=True)
                    pipe.pexpire(self._key, math.ceil(self.lease_s * 1000))
                    pipe.execute()
            # redis-py raises OSError/ValueError, not RedisError, when the client is closed
            # (shutdown) under this thread; the thread must not die of it while slots are held.
            except (redis.RedisError, OSError, ValueError):
                log.warning("Redis unreachable: leases not renewed", exc_info=True)


class RedisThreadLocks:
    """One turn at a time per conversation across every process sharing the Redis.

    Two replicas answering two messages of one conversation at once would each read the same
    checkpoint, and the later write would drop the other's turn. A conversation's lock is a
    redis-py `Lock` (a key with a token, released only by its owner) whose lease this process
    renews while the turn runs, so a process that dies frees its conversations after `lease_s`.
    Tasks of one process queue on a local asyncio lock first and poll Redis only to take turns
    with other processes. While Redis is unreachable, conversations are serialised per process
    only, with a logged warning, as the admission bound is.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "qqrag:", lease_s: float = 30.0):
        self.lease_s = lease_s
        self._client = client
        self._prefix = f"{prefix}thread:"
        self._local = KeyedLocks()

    @asynccontextmanager
    async def hold(
        self, key: str, *, max_waiting: int | None = None, wait_s: float | None = None
    ) -> AsyncIterator[None]:
        until = wait_until(wait_s)
        async with self._local.hold(key, max_waiting=max_waiting, wait_s=wait_s):
            lock = self._client.lock(
                f"{self._prefix}{key}", timeout=self.lease_s, thread_local=False
            )
            async with asyncio.timeout(time_left(until)):
                acquired = await self._acquire(lock)
            if not acquired:
                yield
                return
            renewer = asyncio.create_task(self._renew(lock))
            try:
                yield
            finally:
                renewer.cancel()
                try:
                    lock.release()
                except (redis.RedisError, LockError) as exc:
                    # The lease runs out by itself: the conversation waits at most lease_s.
                    log.warning("conversation lock %s not released: %s", key, exc)

    async def _acquire(self, lock: Lock) -> bool:
        """True once this process holds `lock`; False when Redis could not be asked."""
        try:
            await poll(lambda: bool(lock.acquire(blocking=False)))
        except redis.RedisError as exc:
            log.warning("Redis unavailable, conversations serialised per process: %s", exc)
            return False
        return True

    async def health(self) -> Health:
        return await redis_health(self._client)

    def close(self) -> None:
        """Nothing to release here: the quota store, which shares the client, closes it."""

    async def _renew(self, lock: Lock) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                lock.reacquire()
            except (redis.RedisError, LockError) as exc:
                log.warning("conversation lock lease not renewed: %s", exc)

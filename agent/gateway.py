"""The governance around each turn: who asks, how often, what may pass, which profile answers,
and what gets recorded. HTTP routes (`server.py`) call it; it knows nothing of HTTP.

    authenticate → input safety → profile → [thread lock → admission → quota → graph]
                 → output safety → tokens → audit + metrics
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver

from agent import backends, prompts
from agent.checkpoints import LoopSqliteSaver
from agent.context import Context
from agent.links import mask_links
from agent.models import message_text
from agent.policy.admission import Admission
from agent.policy.metrics import Metrics, Outcome
from agent.policy.profiles import GrayRelease, ProfileError
from agent.policy.quota import QuotaStore
from agent.policy.safety import Hit, SafetyFilter
from agent.policy.tenants import OPEN_PRINCIPAL, Principal, TenantStore
from agent.services import Services
from agent.settings import Settings
from agent.state import Citation
from agent.storage import STORAGE_FULL_MESSAGE, log_storage_full, storage_full_cause
from agent.threads import ConversationBusy, ThreadLocks, thread_id
from agent.turns import QAGraph, TurnResult, stream_turn, turn_config
from tools.health import Health

log = logging.getLogger(__name__)


TIMEOUT_MESSAGE = "这个问题这次没来得及回答，请稍后再问一次。"
CONVERSATION_BUSY_MESSAGE = "上一个问题还在回答，请稍等，答完再问。"

_FORGET_TIMEOUT_S = 5.0
"""How long deleting a request's own thread may take: past it the thread is left (and logged)
rather than holding the turn's task."""

Said = tuple[Literal["user", "assistant"], str]
"""One message of a conversation the caller keeps: who said it, and the text."""


class Refusal(Exception):
    """A request the platform turns away; `message` is Chinese and showable to users as is."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class StorageFull(Refusal):
    """Nothing can be stored: the data folder's disk is full. 507 Insufficient Storage rather
    than 503: no passing overload that a retry in a few seconds would get past."""

    STATUS = 507
    CODE = "storage_full"

    def __init__(self) -> None:
        super().__init__(self.STATUS, self.CODE, STORAGE_FULL_MESSAGE)


@dataclass(frozen=True)
class Speaker:
    platform: str
    scene: Literal["group", "private"]
    user_id: str
    group_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class Pin:
    """A turn's profile chosen by the caller instead of by gray release: an eval run pins the
    profile it measures, `qqrag chat` the options it was started with."""

    profile: str
    context: Context


@dataclass
class Turn:
    """A request that passed the gates, ready to run."""

    principal: Principal
    speaker: Speaker
    text: str
    thread: str
    trace_id: str
    profile: str
    context: Context
    question_hits: list[Hit] = field(default_factory=list)
    answer_hits: list[Hit] = field(default_factory=list)
    received: float = field(default_factory=time.monotonic)
    """When the request arrived (time.monotonic()): the turn's deadline counts from here."""
    history: list[AnyMessage] | None = None
    """The conversation before `text` when the request carries it (the OpenAI convention):
    the turn runs on a thread of its own, seeded with it and deleted once the turn ends.
    None: the conversation is the speaker's stored thread."""


class _Slot:
    """A turn's admission slot, given back once, by whichever comes first: the user's reply or
    the end of the turn's task."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = False

    def take(self) -> bool:
        self._held = self._admission.try_enter()
        return self._held

    def free(self) -> None:
        if self._held:
            self._held = False
            self._admission.leave()


class _MaskedStream:
    """The answer's token preview, masked as the final answer is (sensitive words, links), a
    sentence at a time: a word or a link split across tokens is whole within its sentence, and
    neither crosses a Chinese sentence end or a line break."""

    _END = re.compile(r"[。！？；\n]")

    def __init__(self, mask: Callable[[str], str]) -> None:
        self._mask = mask
        self._pending = ""

    def feed(self, text: str) -> str:
        """What of the stream so far can be shown; the unfinished sentence is held back."""
        self._pending += text
        ends = [m.end() for m in self._END.finditer(self._pending)]
        if not ends:
            return ""
        ready, self._pending = self._pending[: ends[-1]], self._pending[ends[-1] :]
        return self._mask(ready)

    def flush(self) -> str:
        ready, self._pending = self._pending, ""
        return self._mask(ready) if ready else ""


@dataclass
class Answer:
    """What leaves the service: masked, cited, with the turn's bookkeeping."""

    answer: str
    citations: list[Citation]
    intent: str
    thread_id: str
    trace_id: str
    degraded: bool
    profile: str
    result: TurnResult
    """The graph's whole result (query, candidates, verdict, tokens), masked as the answer is."""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        services: Services,
        graph: QAGraph,
        *,
        tenants: TenantStore,
        quota: QuotaStore,
        admission: Admission,
        locks: ThreadLocks,
        safety: SafetyFilter,
        gray: GrayRelease,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.services = services
        self.graph = graph
        self.tenants = tenants
        self.quota = quota
        self.admission = admission
        self.safety = safety
        self.gray = gray
        self.metrics = metrics
        self.locks = locks

    @classmethod
    def from_settings(cls, settings: Settings, services: Services, graph: QAGraph) -> Gateway:
        # One client for all three when state is shared in Redis: the quota store closes it.
        client = backends.shared_state_client(settings)
        return cls(
            settings,
            services,
            graph,
            tenants=TenantStore(settings.tenants_path),
            quota=backends.quota_store(settings, client),
            admission=backends.admission(settings, client),
            locks=backends.thread_locks(settings, client),
            safety=SafetyFilter(settings.effective_sensitive_words_dir),
            gray=GrayRelease(settings.effective_profiles_path),
            metrics=Metrics(),
        )

    async def shared_state_health(self) -> Health | None:
        """How the state shared between replicas is doing; None when none is shared. The quota
        store answers for it: admission and locks share its Redis and fall back with it."""
        if not self.quota.shared:
            return None
        return await self.quota.health()

    def count_outage(self, dependency: str) -> None:
        """A failed call to `dependency` (ollama, maxkb, …), for the metrics."""
        self.metrics.dependency_errors.labels(dependency).inc()

    def close(self) -> None:
        self.tenants.close()
        self.quota.close()
        self.locks.close()

    # —— who is asking ——

    def authenticate(self, authorization: str | None) -> Principal:
        if self.tenants.is_open():
            return OPEN_PRINCIPAL
        principal = self.tenants.authenticate(authorization)
        if principal is None:
            raise Refusal(
                401, "unauthorized", "缺少或无效的 API Key：请在 Authorization 头里带上 Bearer 密钥"
            )
        return principal

    def acting_as(self, principal: Principal, tenant: str) -> Principal:
        """An admin asking as one of the tenants (the console's playground): the turn is that
        tenant's, its knowledge bases, quotas and audit rows. Raises `Refusal`: 403 for a
        client key, 404 for a tenant that does not exist."""
        if tenant == principal.tenant:
            return principal
        if not principal.is_admin:
            raise Refusal(403, "forbidden", "只有管理员密钥可以以其他租户的身份提问")
        if self.tenants.tenant(tenant) is None:
            raise Refusal(404, "tenant_not_found", f"没有租户 {tenant}")
        return replace(principal, tenant=tenant)

    def pinned(self, principal: Principal, profile: str) -> Pin:
        """Gray release's profile `profile` for a turn, whatever its rules would pick. Raises
        `Refusal`: 403 for a client key, 422 for a profile that does not exist."""
        if not principal.is_admin:
            raise Refusal(403, "forbidden", "只有管理员密钥可以指定档案（profile）")
        try:
            assignment = self.gray.book.assignment(profile)
        except ProfileError as exc:
            raise Refusal(422, "invalid_request", str(exc)) from exc
        # No knowledge bases of its own: `admit` gives the tenant's, as for gray release.
        bases = tuple(assignment.knowledge_bases or ())
        return Pin(profile, replace(assignment.apply(Context()), knowledge_bases=bases))

    def thread_of(self, principal: Principal, speaker: Speaker) -> str:
        local = thread_id(
            speaker.platform,
            speaker.scene,
            speaker.user_id,
            speaker.group_id,
            self.settings.group_thread_scope,
        )
        return f"{principal.tenant}:{local}"

    def may_see(self, principal: Principal, thread: str) -> bool:
        return principal.is_admin or thread.startswith(f"{principal.tenant}:")

    # —— the gates before a turn ——

    async def admit(
        self,
        principal: Principal,
        speaker: Speaker,
        text: str,
        *,
        pin: Pin | None = None,
        history: Sequence[Said] | None = None,
    ) -> Turn:
        """Input safety and profile (gray release's, or `pin`'s). The quota is taken by `run`,
        once the turn is sure to be served: a busy refusal costs nothing.

        `history`: the conversation before `text` as the caller keeps it; nothing of the turn
        is stored then, and no other request sees it. None: the speaker's stored thread."""
        if pin is None:
            assignment = self.gray.assign(principal.tenant, speaker.group_id, speaker.user_id)
            profile, context = assignment.profile, assignment.apply(Context())
            asked = assignment.knowledge_bases
        else:
            profile, context, asked = pin.profile, pin.context, list(pin.context.knowledge_bases)
        tenant = self.tenants.tenant(principal.tenant)
        allowed = list(tenant.knowledge_bases) if tenant else [self.settings.kb_name]
        wanted = asked or allowed
        # A profile can narrow a tenant's knowledge bases, never widen them.
        bases = tuple(kb for kb in wanted if kb in allowed) or tuple(allowed)
        context = replace(context, knowledge_bases=bases)
        trace_id = uuid.uuid4().hex[:16]
        if history is None:
            thread, earlier = self.thread_of(principal, speaker), None
        else:
            # Named after the turn, so it is nobody's conversation but this request's.
            thread = f"{principal.tenant}:{speaker.platform}:request:{trace_id}"
            earlier = self._earlier(history, context.keep_turns)
        return Turn(
            principal=principal,
            speaker=speaker,
            text=text,
            thread=thread,
            trace_id=trace_id,
            profile=profile,
            context=context,
            question_hits=self.safety.scan(text),
            history=earlier,
        )

    def _earlier(self, history: Sequence[Said], keep_turns: int) -> list[AnyMessage]:
        """A carried conversation as a stored thread would hold it: a question with a sensitive
        word never got into the conversation, nor did the reply to it; only the latest
        `keep_turns` exchanges are kept."""
        messages: list[AnyMessage] = []
        refused = False
        for role, said in history:
            if role == "user":
                refused = bool(self.safety.scan(said))
                if not refused:
                    messages.append(HumanMessage(content=said))
            elif not refused:
                messages.append(AIMessage(content=said))
        return messages[-2 * keep_turns :] if keep_turns > 0 else []

    # —— the turn ——

    async def run(
        self, turn: Turn, *, tokens: bool = False, trace: bool = False
    ) -> AsyncIterator[tuple[str, Any]]:
        """("node", …) events (and ("token", …) with `tokens`), then ("answer", Answer).

        With `trace` the node events are detailed and carry the nodes' model calls
        (`Context.trace`), unmasked: they are for the operator, not for users (`mask_event`).

        Raises `Refusal` before the first event: busy, conversation busy, quota; and after any,
        "timeout" when the turn's deadline came first (nothing of the turn is kept then).
        Every refusal is decided before any costly work.
        """
        started = time.perf_counter()
        if turn.question_hits:
            try:
                self._take_quota(turn)
            except Refusal as refusal:
                self._record_refusal(turn, refusal.code)
                raise
            answer = self._blocked(turn)
            await self._finish(turn, answer, None, time.perf_counter() - started)
            yield "answer", answer
            return
        slot = _Slot(self.admission)
        deadline = turn.received + self.settings.turn_deadline
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        # The turn runs in a task of its own, so that its deadline holds even when what it
        # waits for does not let go at once when cancelled (psycopg spends up to 10 s trying to
        # cancel a query on a database that stopped answering). Past the deadline the user is
        # answered and the slot freed; the task keeps its conversation until it has ended and
        # taken back what it stored.
        worker = asyncio.create_task(self._work(turn, tokens, trace, deadline, slot, events))
        worker.add_done_callback(lambda _: slot.free())
        preview = _MaskedStream(self.masker(turn.principal.tenant))
        try:
            while True:
                try:
                    async with asyncio.timeout(deadline - time.monotonic()):
                        kind, payload = await events.get()
                except TimeoutError as exc:
                    raise self._timed_out(turn, started) from exc
                if kind == "failed":
                    if isinstance(payload, Refusal):
                        self._record_refusal(turn, payload.code)
                    else:
                        self._record_failure(turn, "error", started)
                    raise payload
                if kind == "result":
                    result: TurnResult = payload
                    if rest := preview.flush():
                        yield "token", rest
                    break
                if kind == "token":
                    if payload := preview.feed(payload):
                        yield kind, payload
                    continue
                yield kind, payload
                if kind == "answer":  # a replayed answer: no turn ran
                    return
        finally:
            if not worker.done():
                worker.cancel()
            slot.free()
        answer = self._masked(turn, result)
        self.quota.add_tokens(
            turn.principal.tenant,
            turn.speaker.user_id,
            turn.speaker.group_id,
            result.tokens,
        )
        await self._finish(turn, answer, result, time.perf_counter() - started)
        yield "answer", answer

    async def _work(
        self,
        turn: Turn,
        tokens: bool,
        trace: bool,
        deadline: float,
        slot: _Slot,
        events: asyncio.Queue[tuple[str, Any]],
    ) -> None:
        """The turn itself, for `run`: its events go to `events`, ending with ("result", …),
        ("answer", replayed answer) or ("failed", exception).

        The conversation first (a bounded queue, a wait bounded by the deadline), then the slot:
        a message waiting for its conversation holds no slot, and every refusal (conversation
        busy, busy, quota) is decided before any costly work, a checkpoint read included.
        """
        try:
            async with AsyncExitStack() as held:
                try:
                    await held.enter_async_context(
                        self.locks.hold(
                            turn.thread,
                            max_waiting=self.settings.max_waiting_per_conversation,
                            wait_s=max(0.0, deadline - time.monotonic()),
                        )
                    )
                except (ConversationBusy, TimeoutError) as exc:
                    self.metrics.conversation_busy.inc()
                    raise Refusal(
                        503, "conversation_busy", CONVERSATION_BUSY_MESSAGE, retry_after=5
                    ) from exc
                if not slot.take():
                    self.metrics.busy_rejections.inc()
                    raise Refusal(503, "busy", "现在提问的人太多了，请稍后再试。", retry_after=5)
                # A retried message (QQ resends webhooks, clients retry after a timeout) gets
                # the answer already stored for it, not a second turn; it costs no quota either.
                if (replayed := await self._replayed(turn)) is not None:
                    events.put_nowait(("answer", replayed))
                    return
                self._take_quota(turn)
                self.metrics.inflight_turns.inc()
                result: tuple[str, Any]
                try:
                    if turn.history:
                        await self._seed(turn)
                    async for event in stream_turn(
                        self.graph,
                        turn.thread,
                        turn.text,
                        replace(turn.context, stream_tokens=tokens, trace=trace, deadline=deadline),
                        message_id=turn.speaker.message_id,
                        trace_id=turn.trace_id,
                        tokens=tokens,
                    ):
                        if event[0] == "result":
                            result = event
                        else:
                            events.put_nowait(event)
                finally:
                    self.metrics.inflight_turns.dec()
                    if turn.history is not None:
                        # Before the result is handed on: once a request that carried its
                        # conversation is answered, nothing of it is stored. Shielded: a turn
                        # cancelled at its deadline deletes its thread too.
                        await asyncio.shield(self._forget(turn.thread))
                events.put_nowait(result)
        except Exception as exc:
            events.put_nowait(("failed", exc))

    async def _seed(self, turn: Turn) -> None:
        """Store the carried conversation in the turn's own thread, as if a turn had just ended
        with it: written as the `command` node, whose only edge leads to the end, so the turn
        runs from the start. Marked with the turn's trace id: a failed turn takes it back too."""
        await self.graph.aupdate_state(
            turn_config(turn.thread, turn.trace_id), {"messages": turn.history}, as_node="command"
        )

    async def _forget(self, thread: str) -> None:
        """Delete a turn's own thread: a request that carried its conversation leaves nothing
        stored behind. Bounded in time; a failure is logged, not raised (the turn is over)."""
        saver = self.graph.checkpointer
        if not isinstance(saver, BaseCheckpointSaver):
            return
        try:
            async with asyncio.timeout(_FORGET_TIMEOUT_S):
                await saver.adelete_thread(thread)
        except Exception as exc:
            log.warning("thread %s of a stateless request not deleted: %s", thread, exc)

    def _record_failure(self, turn: Turn, outcome: Outcome, started: float) -> None:
        """A turn that got no answer still counts, and leaves its audit row: the operator
        sees which questions failed, and when."""
        seconds = time.perf_counter() - started
        self.metrics.count_turn(
            intent="unknown", profile=turn.profile, outcome=outcome, seconds=seconds
        )
        if self.services.audit is None:
            return
        try:
            self.services.audit.record_turn(
                _audit_row(turn, intent="unknown", outcome=outcome, seconds=seconds)
            )
        except Exception as exc:
            # The storage that failed the turn may be the audit's too (a full disk).
            log.warning("audit row of failed turn %s not written: %s", turn.trace_id, exc)

    def _record_refusal(self, turn: Turn, code: str) -> None:
        """A turn turned away before it ran, for the console's charts of refusals."""
        if self.services.audit is None:
            return
        try:
            self.services.audit.record_refusal(turn.principal.tenant, code)
        except Exception as exc:
            # A full disk refuses the turn and this write alike.
            log.warning("refusal of turn %s not recorded: %s", turn.trace_id, exc)

    def _timed_out(self, turn: Turn, started: float) -> Refusal:
        self.metrics.turn_timeouts.inc()
        self._record_failure(turn, "timeout", started)
        log.warning(
            "turn %s on %s passed its %g s deadline; nothing of it is kept",
            turn.trace_id,
            turn.thread,
            self.settings.turn_deadline,
        )
        return Refusal(503, "timeout", TIMEOUT_MESSAGE, retry_after=5)

    async def _replayed(self, turn: Turn) -> Answer | None:
        """The stored answer to this speaker's message of the same id, if it was answered."""
        message_id = turn.speaker.message_id
        if not message_id:
            return None
        config = turn_config(turn.thread)
        values = await self._latest_values(config)
        messages = values.get("messages", [])
        for index, message in enumerate(messages[:-1]):
            reply = messages[index + 1]
            if (
                isinstance(message, HumanMessage)
                and message.additional_kwargs.get("message_id") == message_id
                and isinstance(reply, AIMessage)
            ):
                latest = index + 2 == len(messages)
                result = TurnResult(
                    answer=message_text(reply),
                    # Citations are kept for the conversation's latest answer only.
                    citations=values.get("citations", []) if latest else [],
                    intent=values.get("intent", "knowledge") if latest else "knowledge",
                    query=values.get("query", "") if latest else "",
                    degraded=bool(values.get("degraded")) if latest else False,
                    question=message_text(message),
                )
                return self._masked(turn, result)
        return None

    async def _latest_values(self, config: RunnableConfig) -> dict[str, Any]:
        """The conversation's state as its latest checkpoint holds it. With SQLite, that
        checkpoint is then handed on to the turn's own read (the thread's lock is held)."""
        saver = self.graph.checkpointer
        if not isinstance(saver, LoopSqliteSaver):
            return dict((await self.graph.aget_state(config)).values or {})
        latest = await saver.aget_tuple(config)
        saver.hand_on(config, latest)
        return dict(latest.checkpoint["channel_values"]) if latest is not None else {}

    def _take_quota(self, turn: Turn) -> None:
        """One request off the speaker's quotas. Raises `Refusal`: 429 when one is used up,
        507 when the quota store's disk is full."""
        # Quota and audit writes run on the event loop, as the checkpoints do: each is a
        # sub-millisecond SQLite commit (WAL, synchronous=NORMAL) or Redis round trip (0.5 s
        # socket timeout), and a hand-off to a worker thread cost more CPU than the write.
        speaker = turn.speaker
        try:
            decision = self.quota.check_and_take(
                turn.principal.tenant, speaker.user_id, speaker.group_id
            )
        except Exception as exc:
            if (full := storage_full_cause(exc)) is None:
                raise
            # A Refusal, which gives the admission slot back: a turn that failed here with
            # any other exception would keep it, and a full disk would leave the service
            # "busy" for good once enough turns had failed.
            log_storage_full(
                log,
                f"turn refused (trace {turn.trace_id}, thread {turn.thread})",
                full,
                self.settings.data_dir,
            )
            raise StorageFull from exc
        if not decision.allowed:
            self.metrics.quota_rejections.labels(decision.limit or "unknown").inc()
            raise Refusal(429, "quota_exceeded", decision.message, retry_after=decision.retry_after)

    async def answer(self, turn: Turn) -> Answer:
        async for kind, payload in self.run(turn):
            if kind == "answer":
                final: Answer = payload
        return final

    def _blocked(self, turn: Turn) -> Answer:
        # The question never reaches the graph, so it stays out of the conversation too.
        reply = prompts.render("blocked", turn.context.prompt_variant)
        return Answer(
            answer=reply,
            citations=[],
            intent="blocked",
            thread_id=turn.thread,
            trace_id=turn.trace_id,
            degraded=False,
            profile=turn.profile,
            result=TurnResult(
                answer=reply,
                citations=[],
                intent="blocked",
                query=turn.text,
                degraded=False,
                question=turn.text,
            ),
        )

    def _masked(self, turn: Turn, result: TurnResult) -> Answer:
        allowed = self._link_domains(turn.principal.tenant)
        text, hits = self.safety.mask(result.answer)
        text = mask_links(text, allowed)
        citations = []
        for citation in result.citations:
            # Snippets quote the knowledge base: masked too, but only the answer's hits count.
            # A planted passage names its link in its title or source as well as its text.
            snippet = mask_links(self.safety.mask(citation["snippet"])[0], allowed)
            citations.append(
                Citation(
                    **{
                        **citation,
                        "snippet": snippet,
                        "title": mask_links(citation["title"], allowed),
                        "source": mask_links(citation["source"], allowed),
                    }
                )
            )
        turn.answer_hits = hits
        return Answer(
            answer=text,
            citations=citations,
            intent=result.intent,
            thread_id=turn.thread,
            trace_id=turn.trace_id,
            degraded=result.degraded,
            profile=turn.profile,
            result=replace(result, answer=text, citations=citations),
        )

    def _link_domains(self, tenant: str) -> frozenset[str]:
        """Domains whose links `tenant`'s answers may show: the service's and the tenant's own."""
        own = self.tenants.tenant(tenant)
        return frozenset((*self.settings.link_allowlist, *(own.link_domains if own else ())))

    def masker(self, tenant: str) -> Callable[[str], str]:
        """What makes a text as `tenant`'s users may see it: sensitive words starred, links
        hidden. The tenant's allow-list is read once, for every text it is then given."""
        allowed = self._link_domains(tenant)
        return lambda text: mask_links(self.safety.mask(text)[0], allowed)

    def mask(self, text: str, tenant: str) -> str:
        return self.masker(tenant)(text)

    def mask_event(self, event: Any, tenant: str) -> Any:
        """A node event as `tenant`'s users may see it: every text in it masked. A node event
        quotes the model (the draft, removed sentences, the rewrite) and the knowledge base
        (passage titles) before the output gate, so a client must not get it as it is."""
        return _masked_texts(event, self.masker(tenant))

    # —— bookkeeping ——

    async def _finish(
        self, turn: Turn, answer: Answer, result: TurnResult | None, seconds: float
    ) -> None:
        question_hits, answer_hits = turn.question_hits, turn.answer_hits
        outcome = _outcome(answer, result, bool(question_hits))
        self.metrics.count_turn(
            intent=answer.intent, profile=turn.profile, outcome=outcome, seconds=seconds
        )
        if question_hits:
            self.metrics.count_safety_hits("question", [h.category for h in question_hits])
        if answer_hits:
            self.metrics.count_safety_hits("answer", [h.category for h in answer_hits])
        if result is not None:
            for node, node_seconds in result.node_seconds.items():
                self.metrics.node_seconds.labels(node).observe(node_seconds)
            self.metrics.count_tokens(
                profile=turn.profile,
                prompt=result.prompt_tokens,
                completion=result.completion_tokens,
            )
        if self.services.audit is None:
            return
        hits = [
            {"side": side, "word": h.word, "category": h.category}
            for side, group in (("question", question_hits), ("answer", answer_hits))
            for h in group
        ]
        self.services.audit.record_turn(
            _audit_row(
                turn,
                intent=answer.intent,
                outcome=outcome,
                seconds=seconds,
                answer=answer.answer,
                citations=answer.citations,
                degraded=answer.degraded,
                result=result,
                hits=hits,
            )
        )


def _audit_row(
    turn: Turn,
    *,
    intent: str,
    outcome: Outcome,
    seconds: float,
    answer: str = "",
    citations: Sequence[Citation] = (),
    degraded: bool = False,
    result: TurnResult | None = None,
    hits: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """The turn's audit row; a turn without a graph result (blocked, failed) leaves its
    retrieval and cost columns empty."""
    verdict = result.verdict if result else None
    return {
        "trace_id": turn.trace_id,
        "tenant": turn.principal.tenant,
        "thread_id": turn.thread,
        "profile": turn.profile,
        "intent": intent,
        "outcome": outcome,
        "question": turn.text,
        "query": result.query if result else "",
        "answer": answer,
        "answer_chars": len(answer),
        "candidates": _scored(result.candidates) if result else [],
        "ranked": _scored(result.ranked) if result else [],
        "evidence": _scored(result.evidence) if result else [],
        "cited": [c["passage_id"] for c in citations],
        "supported_ratio": verdict["supported_ratio"] if verdict else None,
        "removed_sentences": len(verdict["removed"]) if verdict else 0,
        "tokens": result.tokens if result else 0,
        "model_calls": result.model_calls if result else 0,
        "node_seconds": result.node_seconds if result else {},
        "seconds": round(seconds, 4),
        "degraded": int(degraded),
        "safety_hits": list(hits),
    }


def _masked_texts(value: Any, mask: Callable[[str], str]) -> Any:
    """`value` with every string in it, at any depth of dicts and lists, put through `mask`."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: _masked_texts(item, mask) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked_texts(item, mask) for item in value]
    return value


def _scored(passages: list[Any]) -> list[list[Any]]:
    return [[p["id"], p["score"]] for p in passages]


def _outcome(answer: Answer, result: TurnResult | None, blocked: bool) -> Outcome:
    if blocked or answer.intent == "blocked":
        return "blocked"
    if answer.degraded:
        return "degraded"
    if answer.intent == "knowledge" and not answer.citations:
        return "not_found"
    return "answered"

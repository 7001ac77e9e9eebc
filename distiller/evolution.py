"""Evolution: live outcomes in, promotions, rejections and failure reports out.

:class:`Evolution` is the part of the distiller that watches skills at work.
The role object forwards it every ``_SKILLSCALE_TRACE`` and
``_SKILLSCALE_FEEDBACK`` event (:meth:`Evolution.observe`) and calls
:meth:`Evolution.tick` periodically. A tick

1. counts the finished outcomes into each running canary (``rollout.json``),
   pairing candidate and active outcomes for the sequential test
   (:class:`skillscale.core.rollout.SPRT`);
2. promotes or rejects a canary whose test decided, or whose time ran out;
3. starts the newest draft when no canary runs;
4. clusters repeated failures of a version by outcome, input shape and stderr;
   a cluster over the threshold marks the skill degraded and, with an LLM
   configured and the skill not hand-edited, asks the LLM for a revised
   SKILL.md and ``scripts/run.py`` that enters the canary like any version;
   a hand-edited skill only gets a suggestion;
5. publishes a ``_SKILLSCALE_SKILLS_CHANGED`` event for every creation,
   canary start, promotion, rejection, rollback and degradation it sees
   (its own or anyone's, e.g. ``skillscale skills rollback``), so servers
   reload the skill between requests.

An outcome is a success when the reply was a success, not slower than
``slow_ms`` (if set), and not scored below 0.5 by feedback or the judge.
Failures are ``exec_failed``, ``timeout``, ``bad_request`` (from the skill's
own input convention: only runs that named a skill are counted) and
``output_too_large``; refusals that are not the skill's doing (overloaded,
deadline, no match) are not outcomes at all. A trace waits up to
``feedback_window`` seconds for feedback before it is counted; feedback that
comes later only feeds failure clustering.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from skillscale.core import rollout
from skillscale.core.discovery import SkillDiscovery
from skillscale.core.events import (
    SKILLS_CHANGED_TOPIC,
    ExecutionTrace,
    FeedbackEvent,
    SkillsChangedEvent,
)
from skillscale.core.llm import LLMClient, LLMError
from skillscale.core.redact import redact
from skillscale.core.runtime import within
from skillscale.core.security import CurveKeys
from skillscale.core.skill_format import SkillFormatError, load_skill
from skillscale.core.transport import BusSocket, Transport, ZmqTransport, proxy_xsub_endpoint

log = logging.getLogger(__name__)

FAILURE_OUTCOMES = frozenset({"exec_failed", "timeout", "bad_request", "output_too_large"})
"""Trace outcomes that are the skill's failure (the rest of the error codes are not its doing)."""
NEGATIVE_FEEDBACK = "negative_feedback"
MAX_OPEN = 10_000
"""Traces waiting for feedback, and finished ones remembered for late feedback."""
MAX_CLUSTERS = 1000
MAX_BUFFERED = 100_000
"""Finished outcomes waiting for the next tick."""


class Judge(Protocol):
    """Scores a reply 0..1 from the task and the output; None when it cannot say."""

    async def score(self, skill: str, task: str, output: str) -> float | None: ...


class LLMJudge:
    """An LLM rubric judge: asks for a 1-10 score, maps it to 0..1.

    Any failure (429 after retries, timeout, an answer without a number in
    range) is "no score", never a guess: the outcome then stands on exit
    status and feedback alone.
    """

    SYSTEM = (
        "You grade one answer of a tool called a skill. Reply with a single integer "
        "from 1 (useless or wrong) to 10 (exactly right) and nothing else."
    )

    def __init__(self, llm: LLMClient) -> None:
        self.llm = llm
        self.scored = 0
        self.failures = 0
        """Calls that gave no score (unavailable, or no usable answer)."""
        self._failing = False

    async def score(self, skill: str, task: str, output: str) -> float | None:
        """The judge's score in 0..1, or None."""
        user = f"Skill: {skill}\nTask:\n{redact(task[:4000])}\n\nAnswer:\n{redact(output[:8000])}"
        try:
            text = await self.llm.complete(self.SYSTEM, user, max_tokens=8)
        except LLMError as exc:
            return self._no_score(f"judge unavailable: {exc}")
        match = re.fullmatch(r"\s*(\d{1,2})\s*(?:/\s*10)?\s*\.?\s*", text)
        if match is None or not 1 <= int(match.group(1)) <= 10:
            return self._no_score(f"judge gave no usable score: {text[:80]!r}")
        if self._failing:
            log.info("judge: scoring again after %d calls without a score", self.failures)
            self._failing = False
        self.scored += 1
        return (int(match.group(1)) - 1) / 9

    def _no_score(self, why: str) -> float | None:
        # One warning per run of failures: a judge down for an hour is one line, not thousands.
        self.failures += 1
        if not self._failing:
            self._failing = True
            log.warning("%s; outcomes stand on exit status and feedback (logged once until "
                        "the judge scores again)", why)  # fmt: skip
        else:
            log.debug("%s", why)
        return None


@dataclass
class EvolutionConfig:
    """How canaries run and when failures count. Durations in seconds."""

    share: float = rollout.DEFAULT_SHARE
    """Share of a skill's callers sent to its candidate."""
    time_limit: float = rollout.DEFAULT_TIME_LIMIT
    test: rollout.TestSettings = field(default_factory=rollout.TestSettings)
    feedback_window: float = 30.0
    """How long a trace waits for feedback before it is counted (0: at once)."""
    slow_ms: float | None = None
    """A success slower than this counts as a failure (None: latency is only reported)."""
    min_failures: int = 5
    """Failures in one cluster before the skill is reported degraded."""
    degraded_rate: float = 0.3
    """...and the failure rate of that version at least this."""
    failure_window: float = 3600.0
    """Failures older than this are forgotten."""
    rescan_interval: float = 5.0
    """Seconds between rescans of the library for new skills and outside changes."""
    judge_timeout: float = 30.0
    """Longest wait for the judge's score of one reply; then the outcome counts unscored."""
    judge_queue: int = 256
    """Replies waiting for the judge; beyond it replies count unscored."""
    new_versions: rollout.NewVersions = rollout.DEFAULT_NEW_VERSIONS
    """``canary``: a draft enters the canary when none runs; ``draft`` (or ``active``):
    drafts wait for ``skillscale skills canary|promote``. LLM revisions after failures
    are drafts under ``draft`` and canaries otherwise."""


@dataclass
class Outcome:
    """One run of a skill version, as the canary and the clusters see it."""

    request_id: str
    skill: str
    version: str | None
    candidate: bool
    success: bool
    outcome: str
    latency_ms: float | None
    input_shape: str
    stderr: str
    at: float = field(default_factory=time.time)
    score: float | None = None
    judging: bool = False
    """Waiting for the judge's score (held back from counting until it comes)."""


@dataclass
class Cluster:
    """Failures of one skill version that look alike."""

    key: str
    skill: str
    version: str | None
    outcome: str
    input_shape: str
    stderr: str
    times: list[float] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    reported: bool = False


def _stderr_signature(stderr: str) -> str:
    """The last meaningful stderr line with numbers, paths and quotes' contents blurred."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    last = re.sub(r"(['\"]).*?\1", r"\1_\1", last)
    last = re.sub(r"\d+", "N", last)
    return last[:200]


class Evolution:
    """``async with Evolution(skills_dir=DIR) as evo: await evo.observe(e); await evo.tick()``.

    ``transport``/``proxy_xsub``/``curve``: where skills-changed events are
    published (default: a ZeroMQ publisher on ``SKILLSCALE_PROXY_XSUB``);
    ``publish``: a callable ``(topic, payload)`` instead, or ``False`` for none.
    ``llm``: enables LLM revisions after failures; ``judge``: scores replies
    whose trace events carry ``task`` and ``output`` (servers do not include
    them by default).
    """

    def __init__(
        self,
        skills_dir: Path | Sequence[Path],
        *,
        config: EvolutionConfig | None = None,
        llm: LLMClient | None = None,
        judge: Judge | None = None,
        publish: Callable[[str, bytes], None] | bool | None = None,
        transport: Transport | None = None,
        proxy_xsub: str | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        dirs = [skills_dir] if isinstance(skills_dir, (str, Path)) else list(skills_dir)
        self.roots = [Path(d) for d in dirs]
        self.config = config or EvolutionConfig()
        self.llm = llm
        self.judge = judge
        self._publish_fn = publish if callable(publish) else None
        self._publish_enabled = publish is not False
        self._given_transport = transport
        self._transport: Transport | None = None
        self._pub: BusSocket | None = None
        self._proxy_xsub = proxy_xsub
        self._curve = curve
        self._dirs: dict[str, Path] = {}
        self._known: dict[str, tuple[str | None, str | None, bool]] | None = None
        self._last_scan = 0.0
        self._drafted: set[str] = set()
        self._open: OrderedDict[str, Outcome] = OrderedDict()
        self._done: OrderedDict[str, Outcome] = OrderedDict()
        self._ready: list[Outcome] = []
        self._clusters: OrderedDict[str, Cluster] = OrderedDict()
        self._runs: dict[tuple[str, str | None], list[tuple[float, bool]]] = {}
        self._lock = asyncio.Lock()
        self.published: list[SkillsChangedEvent] = []
        """Every skills-changed event published (the last 100)."""
        self.rejected_events = 0
        self._tick_events: list[SkillsChangedEvent] = []
        self._judge_queue: asyncio.Queue[tuple[Outcome, str, str]] = asyncio.Queue(
            maxsize=max(1, self.config.judge_queue)
        )
        self._judge_task: asyncio.Task[None] | None = None
        self.judge_stats = {"scored": 0, "unscored": 0, "skipped": 0}
        """Replies the judge scored, could not score (error, timeout, nonsense), or
        never saw (its queue was full)."""
        self._judge_warned = False

    # -- life ------------------------------------------------------------------

    async def __aenter__(self) -> Evolution:
        if self._publish_enabled and self._publish_fn is None:
            self._transport = self._given_transport or ZmqTransport()
            self._pub = self._transport.publisher(
                self._proxy_xsub or proxy_xsub_endpoint(), hwm=1000, linger_ms=500,
                curve=self._curve,
            )  # fmt: skip
        self._rescan(force=True)
        if self.judge is not None:
            self._judge_task = asyncio.create_task(self._judging(), name="evolution-judge")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        if self._judge_task is not None:
            self._judge_task.cancel()
            try:
                await within(asyncio.gather(self._judge_task, return_exceptions=True), 5.0)
            except asyncio.TimeoutError:  # a stop must not hang on the judge
                log.warning("evolution: the judge did not stop within 5 s; left behind")
            self._judge_task = None
        async with self._lock:
            for outcome in self._open.values():
                outcome.judging = False  # the judge is gone: count them as they are
            await self._flush(time.time() + self.config.feedback_window + 1)
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        if self._transport is not None and self._transport is not self._given_transport:
            transport, self._transport = self._transport, None
            await asyncio.get_running_loop().run_in_executor(None, transport.close)

    # -- intake ----------------------------------------------------------------

    async def observe(self, event: Mapping[str, Any] | BaseModel) -> None:
        """Take one trace or feedback event (a model or its JSON object); never raises."""
        data = event.model_dump() if isinstance(event, BaseModel) else dict(event)
        kind = data.get("event")
        try:
            if kind == "feedback":
                await self._on_feedback(FeedbackEvent.model_validate(data))
            elif kind in ("execution", None):
                await self._on_trace(ExecutionTrace.model_validate(data), data)
        except ValidationError as exc:
            self.rejected_events += 1
            log.warning("evolution: ignoring a malformed %s event: %s", kind or "trace",
                        exc.errors()[0]["msg"])  # fmt: skip

    async def _on_trace(self, trace: ExecutionTrace, raw: Mapping[str, Any]) -> None:
        if trace.skill is None:
            return
        if trace.outcome != "success" and trace.outcome not in FAILURE_OUTCOMES:
            return
        success = trace.outcome == "success"
        if success and self.config.slow_ms is not None and trace.elapsed_ms is not None:
            success = trace.elapsed_ms <= self.config.slow_ms
        outcome = Outcome(
            request_id=trace.request_id[:128],
            skill=trace.skill,
            version=trace.skill_version,
            candidate=bool(trace.candidate),
            success=success,
            outcome=trace.outcome if trace.outcome != "success" or success else "slow",
            latency_ms=trace.elapsed_ms,
            input_shape=(trace.input_shape or "")[:200],
            stderr=(trace.stderr or "")[-500:],
            at=trace.timestamp,
        )
        task, output = trace.task, trace.output
        if self.judge is not None and isinstance(task, str) and isinstance(output, str):
            # Judged off the intake path: a slow or dead judge delays this
            # outcome's count (up to judge_timeout), never the next event.
            try:
                self._judge_queue.put_nowait((outcome, task, output))
                outcome.judging = True
            except asyncio.QueueFull:
                self.judge_stats["skipped"] += 1
                if not self._judge_warned:
                    self._judge_warned = True
                    log.warning("evolution: the judge is %d replies behind; replies beyond "
                                "that count unscored", self._judge_queue.maxsize)  # fmt: skip
        if self.config.feedback_window <= 0 and not outcome.judging:
            self._finish(outcome)
            return
        self._open[outcome.request_id] = outcome
        while len(self._open) > MAX_OPEN:
            _, oldest = self._open.popitem(last=False)
            self._finish(oldest)

    async def _judging(self) -> None:
        """Score queued replies one at a time, each within ``judge_timeout``."""
        assert self.judge is not None
        while True:
            outcome, task, output = await self._judge_queue.get()
            try:
                await self._judge_one(outcome, task, output)
            finally:
                self._judge_queue.task_done()

    async def settle(self, timeout: float = 60.0) -> None:
        """Wait until the judge has scored (or given up on) every reply queued so far."""
        if self._judge_task is not None:
            await within(self._judge_queue.join(), timeout)

    async def _judge_one(self, outcome: Outcome, task: str, output: str) -> None:
        assert self.judge is not None
        if not outcome.judging:
            return  # feedback came first and settled it
        try:
            score = await within(
                self.judge.score(outcome.skill, task, output), self.config.judge_timeout
            )
        except asyncio.TimeoutError:
            score = None
            self._judge_failed(f"no score within {self.config.judge_timeout:g} s")
        except Exception as exc:  # a judge of the user's may raise anything
            score = None
            self._judge_failed(f"{type(exc).__name__}: {exc}")
        if outcome.judging:
            outcome.judging = False
            self.judge_stats["scored" if score is not None else "unscored"] += 1
            if score is not None:
                self._apply_score(outcome, score)
                self._judge_warned = False
            if (
                self.config.feedback_window <= 0
                and self._open.pop(outcome.request_id, None) is not None
            ):
                self._finish(outcome)

    def _judge_failed(self, why: str) -> None:
        if not self._judge_warned:
            self._judge_warned = True
            log.warning("evolution: the judge failed (%s); outcomes count unscored "
                        "(logged once until it scores again)", why)  # fmt: skip

    @staticmethod
    def _apply_score(outcome: Outcome, score: float) -> None:
        outcome.score = score
        if score < 0.5 and outcome.success:
            outcome.success = False
            outcome.outcome = NEGATIVE_FEEDBACK
        elif score >= 0.5 and not outcome.success and outcome.outcome == NEGATIVE_FEEDBACK:
            outcome.success = True

    async def _on_feedback(self, feedback: FeedbackEvent) -> None:
        pending = self._open.pop(feedback.request_id, None)
        if pending is not None:
            pending.judging = False  # the caller's own verdict outranks the judge's
            self._apply_score(pending, feedback.score)
            self._finish(pending)
            return
        done = self._done.get(feedback.request_id)
        if done is not None and feedback.score < 0.5 and done.success:
            # Counted already: too late for the canary, still a failure to cluster.
            late = Outcome(**{**done.__dict__, "success": False, "outcome": NEGATIVE_FEEDBACK})
            self._cluster(late)

    def _finish(self, outcome: Outcome) -> None:
        outcome.judging = False  # counted now: a score arriving later does not change it
        self._done[outcome.request_id] = outcome
        while len(self._done) > MAX_OPEN:
            self._done.popitem(last=False)
        if len(self._ready) < MAX_BUFFERED:
            self._ready.append(outcome)
        runs = self._runs.setdefault((outcome.skill, outcome.version), [])
        runs.append((outcome.at, outcome.success))
        if len(runs) > 10_000:
            del runs[:-10_000]
        if not outcome.success:
            self._cluster(outcome)

    def _cluster(self, outcome: Outcome) -> None:
        signature = _stderr_signature(outcome.stderr)
        key = hashlib.sha256(
            "\0".join(
                (outcome.skill, outcome.version or "", outcome.outcome, outcome.input_shape,
                 signature)
            ).encode()
        ).hexdigest()[:16]  # fmt: skip
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = Cluster(key, outcome.skill, outcome.version, outcome.outcome,
                              outcome.input_shape, redact(outcome.stderr))  # fmt: skip
            self._clusters[key] = cluster
            while len(self._clusters) > MAX_CLUSTERS:
                self._clusters.popitem(last=False)
        cluster.times.append(outcome.at)
        cluster.requests = [*cluster.requests[-9:], outcome.request_id]

    # -- decisions -------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[SkillsChangedEvent]:
        """Count, decide, cluster, publish; returns the events published."""
        async with self._lock:
            now = time.time() if now is None else now
            self._tick_events = []
            await self._flush(now)
            self._rescan(force=False, now=now)
            for name in sorted({o.skill for o in self._ready} | self._canary_skills()):
                await self._decide(name, [o for o in self._ready if o.skill == name], now)
            self._ready = []
            await self._failures(now)
            self._rescan(force=True, now=now)
            events, self._tick_events = self._tick_events, []
            return events

    async def _flush(self, now: float) -> None:
        cutoff = now - self.config.feedback_window
        while self._open:
            request_id, oldest = next(iter(self._open.items()))
            wait = self.config.judge_timeout + 1 if oldest.judging else 0.0
            if oldest.at > cutoff - wait:
                break
            oldest.judging = False
            del self._open[request_id]
            self._finish(oldest)

    def _canary_skills(self) -> set[str]:
        """Skills with a canary running or drafts waiting (the latter may start one)."""
        return {n for n, k in (self._known or {}).items() if k[1] is not None} | self._drafted

    async def _decide(self, name: str, outcomes: list[Outcome], now: float) -> None:
        skill_dir = self._dirs.get(name)
        if skill_dir is None:
            return
        state = rollout.read_rollout(skill_dir)
        if state is None:
            return
        canary = state.canary
        if canary is None:
            if state.drafts() and state.active is not None and self.config.new_versions == "canary":
                try:
                    rollout.start_canary(skill_dir, share=self.config.share,
                                         time_limit=self.config.time_limit,
                                         test=self.config.test)  # fmt: skip
                except rollout.RolloutError as exc:
                    log.warning("cannot start a canary of %s: %s", name, exc)
            return
        counted = 0
        for outcome in outcomes:
            if outcome.candidate and outcome.version == canary.version:
                canary.record("candidate", outcome.success, outcome.latency_ms)
            elif not outcome.candidate and outcome.version != canary.version:
                # The active arm (its folder's version string may predate rollout's "1", "2"...)
                canary.record("active", outcome.success, outcome.latency_ms)
            else:
                continue  # a version no longer in this comparison
            counted += 1
        if counted:
            rollout.write_rollout(skill_dir, state)
        verdict, why = canary.decision(now)
        if verdict == "promote":
            if self._hand_edited(skill_dir):
                # The user's edit of the active version is not overwritten.
                rollout.reject(skill_dir, f"not promoted over a hand edit; {why}")
                return
            rollout.promote(skill_dir, why)
            log.info("evolution: promoted %s version %s: %s", name, canary.version, why)
        elif verdict == "reject":
            rollout.reject(skill_dir, why)
            log.info("evolution: rejected %s version %s: %s", name, canary.version, why)

    async def _failures(self, now: float) -> None:
        cfg = self.config
        horizon = now - cfg.failure_window
        for key in list(self._clusters):
            cluster = self._clusters[key]
            cluster.times = [t for t in cluster.times if t >= horizon]
            if not cluster.times:
                del self._clusters[key]
                continue
            if cluster.reported or len(cluster.times) < cfg.min_failures:
                continue
            runs = [ok for t, ok in self._runs.get((cluster.skill, cluster.version), [])
                    if t >= horizon]  # fmt: skip
            rate = runs.count(False) / len(runs) if runs else 1.0
            if rate < cfg.degraded_rate:
                continue
            cluster.reported = True
            await self._report(cluster, rate, now)

    async def _report(self, cluster: Cluster, rate: float, now: float) -> None:
        skill_dir = self._dirs.get(cluster.skill)
        if skill_dir is None:
            return
        try:
            state = rollout.ensure_rollout(skill_dir)
        except (SkillFormatError, OSError) as exc:
            log.warning("cannot record failures of %s: %s", cluster.skill, exc)
            return
        record = rollout.FailureCluster(
            key=cluster.key, version=cluster.version, outcome=cluster.outcome,
            input_shape=cluster.input_shape, stderr=cluster.stderr[-rollout.MAX_TEXT:],
            count=len(cluster.times), first=cluster.times[0], last=cluster.times[-1],
            requests=cluster.requests[-10:],
        )  # fmt: skip
        kept = [f for f in state.failures if f.key != cluster.key]
        state.failures = [*kept[-(rollout.MAX_FAILURE_CLUSTERS - 1) :], record]
        summary = (
            f"{record.count} {record.outcome} failures of version {record.version} "
            f"({rate:.0%} of its recent runs) on input {record.input_shape or '?'}: "
            f"{_stderr_signature(record.stderr) or 'no stderr'}"
        )
        if cluster.version in (state.active, rollout.folder_version(skill_dir)):
            state.degraded = True
        state.note("failures", cluster.version, summary)
        hand_edited = self._hand_edited(skill_dir)
        if hand_edited:
            text = await self._suggest(skill_dir, record, summary)
            state.suggestions = [*state.suggestions[-(rollout.MAX_SUGGESTIONS - 1) :],
                                 rollout.Note(action="suggestion", version=cluster.version,
                                              reason=summary, text=text)]  # fmt: skip
        rollout.write_rollout(skill_dir, state)
        if self.llm is not None and not hand_edited and state.canary is None:
            await self._revise(skill_dir, cluster.skill, record, summary)

    def _hand_edited(self, skill_dir: Path) -> bool:
        history = _skill_history()
        check = getattr(history, "is_hand_edited", None) if history is not None else None
        if check is None:
            return False
        try:
            return bool(check(skill_dir))
        except Exception:  # an unreadable history: be safe, treat as the user's
            log.exception("cannot read the history of %s", skill_dir)
            return True

    async def _suggest(self, skill_dir: Path, record: rollout.FailureCluster, summary: str) -> str:
        offline = (
            f"Runs fail repeatedly: {summary}. Check how scripts/run.py handles inputs "
            f"shaped {record.input_shape or '?'}; the last stderr was:\n{record.stderr[-500:]}"
        )
        if self.llm is None:
            return offline
        try:
            return (await self.llm.complete(
                "You maintain a skill (SKILL.md + scripts/run.py). Suggest, in at most ten "
                "lines, how to fix the failures described. Do not rewrite the files.",
                _skill_prompt(skill_dir, summary, record), max_tokens=400,
            ))[:4000]  # fmt: skip
        except LLMError as exc:
            return f"{offline}\n(LLM suggestion unavailable: {exc})"

    async def _revise(
        self, skill_dir: Path, name: str, record: rollout.FailureCluster, summary: str
    ) -> None:
        assert self.llm is not None
        try:
            text = await self.llm.complete(
                "You maintain a skill. Reply with one JSON object "
                '{"skill_md": "<the full revised SKILL.md>", "run_py": "<the full revised '
                'scripts/run.py, or null to keep it>"} fixing the failures described, and '
                "nothing else. Keep the name and the frontmatter format.",
                _skill_prompt(skill_dir, summary, record),
                max_tokens=3000,
            )
            files = _parse_revision(text, name)
        except (LLMError, ValueError) as exc:
            log.warning("evolution: no LLM revision of %s: %s", name, exc)
            state = rollout.read_rollout(skill_dir)
            if state is not None:
                state.note("revision_failed", record.version, str(exc))
                rollout.write_rollout(skill_dir, state)
            return
        with tempfile.TemporaryDirectory(prefix="skillscale-revise-") as tmp:
            source = Path(tmp) / name
            rollout.copy_version(skill_dir, source)
            for rel, content in files.items():
                (source / rel).parent.mkdir(parents=True, exist_ok=True)
                (source / rel).write_text(content, encoding="utf-8")
            try:
                load_skill(source)
                version = rollout.propose_candidate(
                    skill_dir, source,
                    {"by": "evolution", "reason": summary[:500], "cluster": record.key},
                    start_canary=self.config.new_versions != "draft",
                    share=self.config.share, time_limit=self.config.time_limit,
                    test=self.config.test,
                )  # fmt: skip
            except (SkillFormatError, rollout.RolloutError) as exc:
                log.warning("evolution: the LLM revision of %s is not a valid skill: %s", name,
                            exc)  # fmt: skip
                return
        log.info("evolution: proposed version %s of %s after failures", version, name)

    # -- library and events ------------------------------------------------------

    def _rescan(self, *, force: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if not force and now - self._last_scan < self.config.rescan_interval:
            return
        self._last_scan = now
        catalog = SkillDiscovery(self.roots).scan()
        self._dirs = {name: skill.path for name, skill in catalog.skills.items()}
        current: dict[str, tuple[str | None, str | None, bool]] = {}
        self._drafted = set()
        for name, path in self._dirs.items():
            state = rollout.read_rollout(path)
            if state is None:
                current[name] = (rollout.folder_version(path), None, False)
            else:
                if state.drafts():
                    self._drafted.add(name)
                canary = state.canary.version if state.canary else None
                current[name] = (state.active, canary, state.degraded)
        previous, self._known = self._known, current
        if previous is None:
            return  # the first scan is the baseline, not news
        for name, (active, canary, degraded) in sorted(current.items()):
            where = str(self._dirs[name])
            before = previous.get(name)
            if before is None:
                self._emit("created", name, active, active, where)
                if canary is not None:
                    self._emit("canary", name, canary, active, where)
                continue
            old_active, old_canary, old_degraded = before
            if active != old_active:
                change = "promoted" if old_canary is not None and active == old_canary else (
                    "rolled_back" if _vkey(active) < _vkey(old_active) else "promoted"
                )  # fmt: skip
                self._emit(change, name, active, active, where, self._last_reason(where))
            elif old_canary is not None and canary != old_canary:
                self._emit("rejected", name, old_canary, active, where, self._last_reason(where))
            if canary is not None and canary != old_canary:
                self._emit("canary", name, canary, active, where)
            if degraded and not old_degraded:
                self._emit("degraded", name, active, active, where, self._last_reason(where))

    @staticmethod
    def _last_reason(path: str) -> str | None:
        state = rollout.read_rollout(Path(path))
        return state.log[-1].reason if state is not None and state.log else None

    def _emit(self, change: str, skill: str, version: str | None, active: str | None,
              path: str, reason: str | None = None) -> None:  # fmt: skip
        event = SkillsChangedEvent.model_validate(
            {"change": change, "skill": skill, "version": version, "active": active,
             "path": path, "reason": (reason or "")[:2000] or None}
        )  # fmt: skip
        self.published = [*self.published[-99:], event]
        self._tick_events.append(event)
        payload = event.model_dump_json().encode()
        if self._publish_fn is not None:
            self._publish_fn(SKILLS_CHANGED_TOPIC, payload)
        elif self._pub is not None and not self._pub.closed:
            self._pub.send([SKILLS_CHANGED_TOPIC.encode(), payload])
        log.info("skills changed: %s %s version %s", skill, change, version)

    def status(self) -> dict[str, Any]:
        """Rollout status of every skill with a rollout file, plus what waits in memory."""
        skills = {}
        for name, path in sorted(self._dirs.items()):
            info = rollout.status(path)
            if info is not None:
                skills[name] = info
        return {
            "skills": skills,
            "waiting_for_feedback": len(self._open),
            "uncounted": len(self._ready),
            "failure_clusters": len(self._clusters),
            "judge": dict(self.judge_stats) if self.judge is not None else None,
        }


def _vkey(version: str | None) -> tuple[int, str]:
    if version is None:
        return (-1, "")
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _skill_history() -> Any | None:
    import importlib

    try:
        return importlib.import_module("skillscale.core.skill_history")
    except ImportError:
        return None


def _skill_prompt(skill_dir: Path, summary: str, record: rollout.FailureCluster) -> str:
    skill_md = (skill_dir / "SKILL.md").read_text(encoding="utf-8", errors="replace")[:20_000]
    run_py = skill_dir / "scripts" / "run.py"
    script = (
        run_py.read_text(encoding="utf-8", errors="replace")[:20_000] if run_py.is_file() else ""
    )
    return redact(
        f"Failures: {summary}\nInput shape: {record.input_shape}\nStderr tail:\n"
        f"{record.stderr[-1500:]}\n\n--- SKILL.md ---\n{skill_md}\n\n"
        f"--- scripts/run.py ---\n{script or '(none)'}"
    )


def _parse_revision(text: str, name: str) -> dict[str, str]:
    """The files of an LLM revision, checked; ValueError for anything else."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("the answer holds no JSON object")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("skill_md"), str):
        raise ValueError("the answer has no skill_md string")
    files = {"SKILL.md": data["skill_md"][:200_000]}
    run_py = data.get("run_py")
    if isinstance(run_py, str) and run_py.strip():
        try:
            compile(run_py, "scripts/run.py", "exec")
        except SyntaxError as exc:
            raise ValueError(f"the revised run.py does not compile: {exc.msg}") from None
        files["scripts/run.py"] = run_py[:200_000]
    if f"name: {name}" not in files["SKILL.md"]:
        raise ValueError(f"the revised SKILL.md does not keep the name {name!r}")
    return files

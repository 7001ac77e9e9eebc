"""Coverage-guided fuzzing of the wire parsers with atheris; run by hand, not by pytest.

    pip install atheris
    python tests/fuzz_atheris.py -runs=100000            # or -max_total_time=60
    python tests/fuzz_atheris.py -runs=100000 corpus/    # keep and grow a corpus

The first input byte picks a boundary, the rest is its input. Each boundary's
contract (issue 8) is checked: an exception other than the one it may raise,
or a result outside its bounds, is a crash and libFuzzer saves the input as
``crash-<sha1>``. Replay one with ``python tests/fuzz_atheris.py crash-<sha1>``.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from skillscale.core.errors import ErrorCode, RequestError
    from skillscale.core.protocol import (
        ID_PATTERN,
        Reply,
        Request,
        is_reply_topic,
        parse_intent,
        salvage_address,
    )
    from skillscale.core.replica_protocol import ServerState
    from skillscale.proxy.groups import GroupsConfig, Job, ReplicaGroups, job_deadline
    from skillscale.skill_server.executor import SubprocessExecutor
    from skillscale.skill_server.handler import HandlerConfig, Rejection, RequestHandler
    from skillscale.skill_server.registry import SkillRegistry

from pydantic import ValidationError

FIXTURE_SKILLS = Path(__file__).resolve().parent / "fixtures" / "skills" / "testing"
TOPICS = frozenset({"TOPIC_FUZZ", "AGENT_REPLY_self"})
HANDLER = RequestHandler(
    SkillRegistry([FIXTURE_SKILLS], 1.0, None),
    SubprocessExecutor(sys.executable),
    HandlerConfig(server_id="fuzz", topics=TOPICS, max_request_bytes=64 * 1024),
)
_ID_RE = re.compile(ID_PATTERN)


def fuzz_request(data: bytes) -> None:
    try:
        request = Request.from_bytes(data)
    except RequestError:
        return
    assert _ID_RE.match(request.request_id)
    assert is_reply_topic(request.reply_to.encode())
    with contextlib.suppress(RequestError):
        parse_intent(request.intent)


def fuzz_intent(data: bytes) -> None:
    try:
        parse_intent(data.decode("utf-8", "surrogatepass"))
    except UnicodeDecodeError:
        return
    except RequestError:
        return


def fuzz_salvage_and_deadline(data: bytes) -> None:
    reply_to, request_id = salvage_address(data)
    assert reply_to is None or is_reply_topic(reply_to.encode())
    assert request_id == "" or _ID_RE.match(request_id)
    deadline = job_deadline(data)
    assert deadline is None or (type(deadline) is float and math.isfinite(deadline))


def fuzz_reply(data: bytes) -> None:
    try:
        Reply.from_bytes(data)
    except ValidationError:
        return


def fuzz_state(data: bytes) -> None:
    try:
        state = ServerState.from_bytes(data)
    except ValueError:
        return
    assert 1 <= state.slots <= 4096 and len(state.topics) <= 64
    groups = ReplicaGroups(_NullIO())
    groups.on_heartbeat(b"peer", state, 0.0)
    for topic in state.topics[:4]:
        groups.on_request(topic.encode(), b"{}", 0.0, plain_subscriber=False)
    groups.tick(100.0)


def fuzz_decode(data: bytes) -> None:
    decoded = HANDLER.decode(data)
    if isinstance(decoded, Rejection):
        assert decoded.reply_to is None or decoded.reply_to not in TOPICS
        assert len(decoded.reply.to_bytes()) < 16 * 1024
    else:
        assert decoded.reply_to not in TOPICS


class _NullIO:
    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        return True

    def publish(self, frames: list[bytes]) -> None:
        pass

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        pass


class _CountingIO(_NullIO):
    def __init__(self) -> None:
        self.errors: dict[bytes, int] = {}
        self.down: set[bytes] = set()

    def send_to(self, identity: bytes, frames: list[bytes]) -> bool:
        return identity not in self.down

    def reply_error(self, job: Job, code: ErrorCode, message: str) -> None:
        self.errors[job.dispatch_id] = self.errors.get(job.dispatch_id, 0) + 1
        assert self.errors[job.dispatch_id] == 1, "two error replies for one request"


def fuzz_groups(data: bytes) -> None:
    """Each byte pair is one event on a small ReplicaGroups; the books must balance."""
    io = _CountingIO()
    groups = ReplicaGroups(
        io,
        GroupsConfig(heartbeat_timeout=3, no_server_wait=2, max_queue=3, max_queued_total=5,
                     max_attempts=2, max_members=3, max_topics=2),
    )  # fmt: skip
    topics = [b"TOPIC_A", b"TOPIC_B", b"TOPIC_C"]
    members = [b"m0", b"m1", b"m2", b"m3"]
    now = 0.0
    answered: dict[bytes, int] = {}
    for op, arg in zip(data[::2], data[1::2], strict=False):
        topic, member = topics[arg % 3], members[(arg >> 2) % 4]
        kind = op % 8
        if kind == 0:
            now += (arg % 16) / 4
            groups.tick(now)
        elif kind == 1:
            body = b'{"deadline": %d}' % (now + arg % 8) if arg & 0x80 else b"{}"
            groups.on_request(topic, body, now, plain_subscriber=bool(arg & 0x40))
        elif kind == 2:
            names = [t.decode() for t in topics if (op >> 3) & (1 << topics.index(t))]
            state = ServerState(server_id=member.decode(), topics=names, slots=1 + arg % 3,
                                draining=bool(op & 0x80))  # fmt: skip
            groups.on_heartbeat(member, state, now)
        elif kind in (3, 4) and groups.inflight:
            ids = sorted(groups.inflight)
            did = ids[arg % len(ids)]
            job = groups.inflight[did]
            sender = job.member if op & 0x80 and job.member else member
            if kind == 3:
                if job.member == sender:
                    answered[did] = answered.get(did, 0) + 1
                groups.on_reply(sender, did, b"AGENT_REPLY_c", b"{}", now)
            else:
                groups.on_return(sender, did, now)
        elif kind == 5:
            groups.on_bye(member, now)
        elif kind == 6:
            (io.down.add if arg & 1 else io.down.discard)(member)
        queued = [job for queue in groups.queues.values() for job in queue]
        assert groups.queued == len(queued)
        assert groups.queued_bytes == sum(len(job.payload) for job in queued)
        owned = {did for m in groups.members.values() for did in m.inflight}
        assert owned == set(groups.inflight)
        for did in set(io.errors) | set(answered):
            assert io.errors.get(did, 0) + answered.get(did, 0) == 1


TARGETS = [
    fuzz_request,
    fuzz_intent,
    fuzz_salvage_and_deadline,
    fuzz_reply,
    fuzz_state,
    fuzz_decode,
    fuzz_groups,
]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)  # replica joins and losses log at INFO/WARNING
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

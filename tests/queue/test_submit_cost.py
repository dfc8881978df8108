"""One `Queue.submit` asks Redis for each thing once (issue 14): what submit.lua costs is counted in Redis's own
command statistics and in the arguments of its call, never timed. And what it skips is only what a job does not
need: a duplicate id, a new shape, a job with a customer, parents or a start time behave as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from appliance.queue import DuplicateJob, JobStatus, Queue
from appliance.queue.models import Job, JobSpec, Requirements, no_requirements
from appliance.queue.scripts import ScriptSet
from tests.commandstats import command_calls
from tests.pubsub import json_messages


async def test_a_plain_submit_behind_the_head_runs_fourteen_commands(queue: Queue, aredis: Any) -> None:
    # Before: HEXISTS state (the duplicate check), then HSET state, HSETNX shapes on every submit, and INCR seq
    # for the FIFO tie-break besides HINCRBY counts: 18. Then the id was taken with one HSETNX state, a shape
    # already in heads was known to be registered, and the count of submissions is the tie-break: 15. Now a job
    # that ranks behind its shape's head (fair share reads that head anyway) leaves heads as it is: 14.
    # (TIME, HSETNX state, HINCRBY counts, fair share: ZRANGE ready, HGET meta, HGET fair_finish, HGET
    # fair_weights, HSET fair_finish; HSET spec, HSET meta, ZADD ready, ZPOPMIN idle, XADD, PUBLISH.)
    first = await queue.submit({"service": "echo"})
    await aredis.config_resetstat()
    job = await queue.submit({"service": "echo"})
    calls = await command_calls(aredis)
    assert "hexists" not in calls and "incr" not in calls and calls.get("hsetnx") == 1, calls
    assert calls.get("hset") == 3, calls  # spec, meta, the customer's fair-share tag
    assert calls.get("zadd") == 1, calls  # the ready index only
    assert sum(calls.values()) == 14, calls
    assert (await queue.get(job.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
    assert await aredis.hget(queue.keys.counts, "submitted") == b"2"
    assert await aredis.zscore(queue.keys.heads, first.shape) == await aredis.zscore(
        queue.keys.ready(first.shape), first.id
    )


async def test_a_job_that_ranks_first_still_lowers_its_shapes_head(queue: Queue, aredis: Any) -> None:
    # Only a job behind the head skips the ZADD of heads: one that ranks first (a higher priority here) moves the
    # shape's entry to its score, and a claim of the shape takes it first.
    await queue.submit({"service": "echo"})
    urgent = await queue.submit({"service": "echo", "priority": 3})
    ready = queue.keys.ready(urgent.shape)
    assert await aredis.zscore(queue.keys.heads, urgent.shape) == await aredis.zscore(ready, urgent.id)
    assert (await queue.claim("w", [urgent.shape])).job.id == urgent.id  # type: ignore[union-attr]


async def test_a_plain_job_passes_only_the_keys_and_arguments_it_uses(queue: Queue) -> None:
    # Before: every submit passed all 23 KEYS and 20 ARGV; each costs the server about 1 µs per call. Now
    # a plain job passes 12 and 15 (and every other job 22: the counter `seq` went).
    sizes: list[tuple[int, int]] = []
    original = ScriptSet.call

    async def recording(
        self: ScriptSet, client: object, name: str, keys: list[str], args: list[object], **options: Any
    ) -> Any:
        if name == "submit":
            sizes.append((len(keys), len(args)))
        return await original(self, client, name, keys, args, **options)

    queue.scripts.call = recording.__get__(queue.scripts)  # type: ignore[method-assign]
    plain = await queue.submit({"service": "echo"})
    await queue.submit({"service": "echo", "customer_id": "acme"})
    await queue.submit({"service": "echo", "delay_s": 60})
    await queue.submit({"service": "echo", "after": [plain.id]})
    assert sizes == [(12, 15), (22, 20), (22, 20), (22, 21)]


async def test_a_new_shape_is_registered_and_announced_once(queue: Queue, aredis: Any) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe(queue.keys.shapes_channel)
    assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"  # type: ignore[index]
    first = await queue.submit({"service": "echo"})
    await queue.submit({"service": "echo"})
    # Its ready index drained: the shape leaves heads, and comes back with the next job, still registered.
    while (claimed := await queue.claim("w", [first.shape])) is not None:
        await queue.complete(claimed.job.id, claimed.token, {})
    assert await aredis.zscore(queue.keys.heads, first.shape) is None
    again = await queue.submit({"service": "echo"})
    other = await queue.submit({"service": "other"})
    seen = []
    while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
        seen.append(message["data"].decode())
    await pubsub.aclose()
    assert seen == [first.shape, other.shape]
    assert set(await aredis.hkeys(queue.keys.shapes)) == {first.shape.encode(), other.shape.encode()}
    assert await aredis.zscore(queue.keys.heads, again.shape) is not None
    assert (await queue.claim("w", [again.shape])).job.id == again.id  # type: ignore[union-attr]


@pytest.mark.parametrize("after", [False, True])
async def test_a_duplicate_id_changes_nothing(queue: Queue, aredis: Any, after: bool) -> None:
    parent = await queue.submit({"service": "echo"})
    extra = {"after": [parent.id]} if after else {}
    await queue.submit({"id": "order-1", "service": "echo", "payload": {"v": 1}, **extra})
    before = await aredis.hgetall(queue.keys.counts), await aredis.xlen(queue.keys.events)
    state = await aredis.hget(queue.keys.state, "order-1")
    with pytest.raises(DuplicateJob):
        await queue.submit({"id": "order-1", "service": "echo", "payload": {"v": 2}, **extra})
    assert (await aredis.hgetall(queue.keys.counts), await aredis.xlen(queue.keys.events)) == before
    assert await aredis.hget(queue.keys.state, "order-1") == state
    assert (await queue.get("order-1")).payload == {"v": 1}  # type: ignore[union-attr]


async def test_the_submitted_event_and_the_stored_times_are_whole_numbers(queue: Queue, aredis: Any) -> None:
    # Times and scores go to Redis as '%d' text (a float format costs as much as a small command): the same
    # values as before, never an exponent or a fraction.
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_submitted")
    plain = await queue.submit({"service": "echo", "priority": 2})
    later = await queue.submit({"service": "echo", "delay_s": 30})
    (_, message), (_, delayed) = await json_messages(pubsub, 2)
    await pubsub.aclose()
    assert message == {
        "event": "submitted",
        "queue": queue.name,
        "job": plain.id,
        "service": "echo",
        "shape": plain.shape,
        "priority": "2",
    }
    assert delayed["run_at"].isdigit()
    meta = (await aredis.hget(queue.keys.meta, plain.id)).decode().split("|")
    assert meta[2].isdigit() and meta[6].lstrip("-").isdigit(), meta
    score = await aredis.zscore(queue.keys.ready(plain.shape), plain.id)
    assert score == int(meta[6])
    tag, arrival = (await aredis.hget(queue.keys.fair_finish, "-")).decode().split("|")
    assert tag.isdigit() and arrival.isdigit()
    due = await aredis.zscore(queue.keys.delayed, later.id)
    entry = {k.decode(): v.decode() for k, v in (await aredis.xrange(queue.keys.events))[-1][1].items()}
    assert entry["job"] == later.id and entry["run_at"] == delayed["run_at"] == str(int(due))


async def test_a_new_customer_starts_at_the_tag_of_a_prioritised_head(queue: Queue, aredis: Any) -> None:
    # Fair share's virtual time is the head's tag: its score plus its priority offset (read from its meta,
    # converted only when not 0). A customer that just arrived ranks next in line: at that tag.
    head = await queue.submit({"service": "echo", "priority": 5})
    newcomer = await queue.submit({"service": "echo", "customer_id": "acme"})
    ready = queue.keys.ready(head.shape)
    offset = 5 * queue.settings.priority_step_ms * 1000
    assert await aredis.zscore(ready, newcomer.id) - await aredis.zscore(ready, head.id) == offset


async def test_jobs_due_in_the_same_millisecond_keep_their_order(queue: Queue, aredis: Any) -> None:
    # The FIFO tie-break within a millisecond is the count of submissions (INCR seq before): jobs scheduled for
    # the same instant rank in the order they were submitted.
    due = datetime.now(UTC) + timedelta(minutes=5)
    jobs = await queue.submit_many([{"service": "echo", "run_at": due.isoformat()} for _ in range(20)])
    metas = await aredis.hmget(queue.keys.meta, [j.id for j in jobs])
    scores = [int(m.decode().rsplit("|", 1)[1]) for m in metas]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)
    assert {s // 1000 for s in scores} == {int(due.timestamp() * 1000)}


async def test_fair_share_reads_the_heads_score_as_its_meta_text(queue: Queue, aredis: Any) -> None:
    # Before: `ZRANGE ready 0 0 WITHSCORES`, whose score Redis formats as a double and the script parsed back
    # (~3,500 instructions a submit); the same score is the last column of the head's meta, read anyway for its
    # priority. The head's tag, so a newcomer's place, is unchanged (the test above and tests/queue/test_fair*).
    await queue.submit({"service": "echo"})
    async with aredis.monitor() as monitor:
        await queue.submit({"service": "echo"})
        seen: list[str] = []
        while not any("XADD" in c.upper() for c in seen):
            seen.append((await monitor.next_command())["command"])
    zrange = [c for c in seen if c.upper().startswith("ZRANGE")]
    assert zrange and not any("WITHSCORES" in c.upper() for c in zrange), zrange


async def test_a_head_whose_meta_has_no_score_is_read_from_its_index(queue: Queue, aredis: Any) -> None:
    # A meta column without a score (not written by this version) falls back to the head's score in the index.
    head = await queue.submit({"service": "echo", "priority": 5})
    meta = (await aredis.hget(queue.keys.meta, head.id)).decode()
    await aredis.hset(queue.keys.meta, head.id, meta.rsplit("|", 1)[0])
    newcomer = await queue.submit({"service": "echo", "customer_id": "acme"})
    ready = queue.keys.ready(head.shape)
    offset = 5 * queue.settings.priority_step_ms * 1000
    assert await aredis.zscore(ready, newcomer.id) - await aredis.zscore(ready, head.id) == offset


@pytest.mark.parametrize("parent_state", ["waiting", "failed"])
async def test_the_submitted_event_of_a_child_says_the_same_on_both_paths(
    queue: Queue, aredis: Any, parent_state: str
) -> None:
    # The event's stream entry and pub/sub message are built by two table constructors (emit_many's form):
    # the same names and values, as emit wrote them (numbers as text). A cancelled parent ends it at once.
    parent = await queue.submit({"service": "echo"})
    if parent_state == "failed":
        await queue.cancel(parent.id)
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_submitted")
    child = await queue.submit({"service": "echo", "after": [parent.id], "on_parent_failure": "cancel"})
    ((_, message),) = await json_messages(pubsub, 1)
    await pubsub.aclose()
    entries = await aredis.xrange(queue.keys.events)
    entry = next(
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in reversed(entries)
        if fields[b"event"] == b"submitted" and fields[b"job"] == child.id.encode()
    )
    assert message == {**entry, "queue": queue.name}
    expected = {"job": child.id, "service": "echo", "shape": child.shape, "priority": "0", "parents": "1"}
    assert entry == {
        "event": "submitted",
        **expected,
        **({"blocked": "1"} if parent_state == "waiting" else {}),
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"service": "echo"},
        {"service": "echo", "payload": {"a": [1]}, "priority": 2, "customer_id": "acme", "timeout_s": 5},
        {"service": "echo", "requirements": {"tags": ["b", "a"]}, "delay_s": 60, "workflow_id": "wf"},
    ],
)
async def test_the_returned_job_is_not_validated_a_second_time(
    queue: Queue, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the Job a submit returns was built with Job(...), which validated every field of the spec again
    # (about a fifth of the client's Python per submit). Now it is made from the validated spec's fields
    # (jobbody.submitted_job); it must be the Job that validation would have made.
    built: list[object] = []
    original = Job.__init__

    def counting(self: Job, **data: Any) -> None:
        built.append(data)
        original(self, **data)

    monkeypatch.setattr(Job, "__init__", counting)
    job = await queue.submit(dict(spec))
    monkeypatch.undo()
    assert built == []
    again = Job.model_validate(job.model_dump(include=job.model_fields_set))
    assert job == again and list(job.__dict__) == list(again.__dict__)
    assert job.model_fields_set == {
        *(set(JobSpec.model_fields) - {"id", "run_at", "delay_s"}),
        *("id", "shape", "status", "created_at", "next_attempt_at"),
    }
    stored = await queue.get(job.id)
    assert stored is not None
    assert (stored.payload, stored.requirements, stored.shape) == (job.payload, job.requirements, job.shape)


def test_the_default_requirements_are_those_validation_makes() -> None:
    # Before: every JobSpec without requirements validated Requirements() (its defaults, its model validator):
    # ~40% of a plain job's validation. The default factory builds the same model without that.
    made, validated = no_requirements(), Requirements()
    assert made == validated and list(made.__dict__) == list(validated.__dict__)
    assert made.model_fields_set == validated.model_fields_set == set()
    one, two = JobSpec(service="echo"), JobSpec(service="echo")
    assert one.requirements.tags is not two.requirements.tags  # each job its own lists
    assert JobSpec.model_fields["requirements"].default_factory is no_requirements


async def test_a_plain_submit_packs_only_its_own_five_arguments(
    queue: Queue, packed_lengths: list[int]
) -> None:
    # Before: each submit packed its 15 ARGV (hiredis formats each with sprintf). Now ARGV[1..10] (the settings'
    # and the shape's) are one list per shape, packed once with the KEYS: a call packs the job's id, body,
    # priority, retries and timeout. Another shape, or new settings, gets its own prefix.
    if queue.conn.scripts.use_functions:
        pytest.skip("FCALL goes through redis-py's packing")
    await queue.submit({"service": "echo"})
    packed = packed_lengths
    packed.clear()  # the first submit of a shape packs its prefix with the KEYS
    first = await queue.submit({"service": "echo"})
    await queue.submit({"service": "echo", "priority": 1})
    other = await queue.submit({"service": "other"})
    assert packed == [5, 5, 3 + 12 + 10, 5], packed
    assert first.shape != other.shape
    for job in (first, other):
        assert (await queue.get(job.id)).status is JobStatus.PENDING  # type: ignore[union-attr]

"""The worker's round trip (finish_claim.lua: complete the finished jobs, claim the next) and its heartbeat ask
Redis for each thing once (issue 14): what they cost is counted in Redis's own command statistics, never timed.
And every transition still reaches every reader: the stream and the channels get a `completed` and a `claimed`
per job (a batch's of one kind in one entry and one message)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from appliance.queue import JobStatus, Queue
from appliance.queue.events import entry_events, pubsub_events
from tests.commandstats import command_calls
from tests.pubsub import json_messages


async def test_a_round_trip_of_one_job_reads_the_clock_and_meta_once_and_writes_state_once(
    queue: Queue, aredis: Any
) -> None:
    # Before (main 38ec113): complete.lua and claim.lua each ran TIME, HMGET meta and HSET state inside
    # finish_claim.lua, two HLENs (limits, pauses), and HMGET charged, HDEL cancels and EXISTS children with
    # nothing charged, cancelled or waiting: 31 commands for one job completed and one claimed. Then one of each,
    # and one EXISTS for the keys that stay empty unless a feature is in use (charged, cancels, children, limits,
    # paused): 24 (main 1485575). Now a quiet queue's round trip of a worker class of one shape claims from its
    # ready index without walking `heads` (no ZRANGE heads, no SMISMEMBER): 22 (includes/quiet_trip.lua).
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(3)])
    shapes = [jobs[0].shape]
    _, first = await queue.finish_and_claim([], "w", shapes, 1)
    await aredis.config_resetstat()
    codes, second = await queue.finish_and_claim([(first[0].job.id, first[0].token, {})], "w", shapes, 1)
    calls = await command_calls(aredis)
    assert codes == [1] and [c.job.id for c in second] == [jobs[1].id]
    assert calls.get("time") == 1, calls
    assert calls.get("hget") == 2, calls  # owner (the lease check) and spec: one job each
    assert calls.get("hmget") == 1, calls  # meta (the events), of both jobs at once
    assert calls.get("hset") == 4, calls  # results, info, owner and state, once each
    assert "hlen" not in calls and calls.get("exists") == 1, calls
    assert "smismember" not in calls and calls.get("zrange") == 1, calls  # the new head only, no walk
    assert calls.get("hdel") == 1, calls  # the owner column only
    assert sum(calls.values()) == 22, calls
    assert (await queue.get(first[0].job.id)).status is JobStatus.COMPLETED
    assert (await queue.get(jobs[1].id)).status is JobStatus.CLAIMED


async def test_every_transition_of_the_round_trips_reaches_the_stream_and_the_channels(
    queue: Queue, aredis: Any
) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_claimed", "complete_job")
    a, b = await queue.submit_many([{"service": "echo"}, {"service": "echo"}])
    shapes = [a.shape]
    await aredis.delete(queue.keys.events)
    _, first = await queue.finish_and_claim([], "w", shapes, 1)
    # The claim takes the next job: the completed job's meta is read with the claimed one's.
    _, second = await queue.finish_and_claim([(a.id, first[0].token, {"x": 1})], "w", shapes, 1)
    # Nothing left to claim: finish_claim.lua reads the completed job's meta itself.
    codes, third = await queue.finish_and_claim([(b.id, second[0].token, {})], "w", shapes, 1)
    assert codes == [1] and third == []
    entries = [
        {k.decode(): v.decode() for k, v in e[1].items()} for e in await aredis.xrange(queue.keys.events)
    ]
    assert [(e["event"], e["job"]) for e in entries] == [
        ("claimed", a.id),
        ("completed", a.id),
        ("claimed", b.id),
        ("completed", b.id),
    ]
    assert all(e["service"] == "echo" and e["worker"] == "w" for e in entries), entries
    assert entries[1]["result_bytes"] == str(len('{"x":1}')) and int(entries[3]["duration_ms"]) >= 0
    assert int(entries[2]["wait_ms"]) >= 0 and entries[2]["attempt"] == "1"
    seen = await json_messages(pubsub, 4)
    await pubsub.aclose()
    assert [(c, e["job"], e["event"]) for c, e in seen] == [
        ("job_claimed", a.id, "claimed"),
        ("complete_job", a.id, "completed"),
        ("job_claimed", b.id, "claimed"),
        ("complete_job", b.id, "completed"),
    ]
    assert all(e["service"] == "echo" for _, e in seen)


async def test_a_round_trip_of_several_jobs_writes_one_message_and_one_stream_entry_per_kind(
    queue: Queue, aredis: Any
) -> None:
    # Before: a PUBLISH (and a cjson call) per completed and per claimed job, 6 messages for this round trip. Then
    # one complete_job message with the 3 completions and one job_claimed message with the 3 claims (`event` and
    # `queue` once, a `jobs` list), and still a stream entry per transition: 6 XADDs and an XTRIM (main 4726583).
    # Now the stream too: one entry per kind, `event <kind> jobs <the message's jobs array, the same text>`.
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(6)])
    shapes = [jobs[0].shape]
    _, first = await queue.finish_and_claim([], "w", shapes, 3)
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_claimed", "complete_job")
    await aredis.delete(queue.keys.events)
    await aredis.config_resetstat()
    outcomes = [(c.job.id, c.token, {"n": i}) for i, c in enumerate(first)]
    codes, second = await queue.finish_and_claim(outcomes, "w", shapes, 3)
    assert codes == [1, 1, 1] and len(second) == 3
    calls = await command_calls(aredis)
    assert calls.get("publish") == 2 and calls.get("xadd") == 2 and "xtrim" not in calls, calls
    raw, texts = [], []
    async with asyncio.timeout(10):
        while len(raw) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                raw.append((message["channel"].decode(), json.loads(message["data"])))
                texts.append(message["data"].decode())
    await pubsub.aclose()
    assert [c for c, _ in raw] == ["complete_job", "job_claimed"]
    assert [(body["event"], body["queue"], len(body["jobs"])) for _, body in raw] == [
        ("completed", "default", 3),
        ("claimed", "default", 3),
    ]
    published = [event for _, body in raw for event in pubsub_events(json.dumps(body))]
    assert [(e["event"], e["job"]) for e in published] == [("completed", c.job.id) for c in first] + [
        ("claimed", c.job.id) for c in second
    ]
    # One entry per kind, whose `jobs` is the message's array (one cjson call serves both copies), and the events
    # it carries are the message's, less the queue: the two copies agree.
    rows = await aredis.xrange(queue.keys.events)
    entries = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]
    assert [(e["event"], list(e)) for e in entries] == [
        ("completed", ["event", "jobs"]),
        ("claimed", ["event", "jobs"]),
    ]
    assert [text.endswith(',"jobs":' + e["jobs"] + "}") for text, e in zip(texts, entries, strict=True)] == [
        True
    ] * 2
    events = [event for (i, _), e in zip(rows, entries, strict=True) for event in entry_events(i.decode(), e)]
    assert [{**e.fields, "queue": "default"} for e in events] == published
    assert [e.id for e in events] == [f"{rows[n][0].decode()}.{i}" for n in (0, 1) for i in range(3)]


async def test_round_trips_of_several_jobs_keep_the_stream_capped(make_queue: Any, aredis: Any) -> None:
    # A batch's events of one kind are one entry, added with XADD's own trim (`MAXLEN ~`): the cap, in entries,
    # holds as it did with an entry per event (approximate: whole stream nodes of up to 100 entries go).
    q = await make_queue(events_maxlen=10)
    jobs = await q.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(300)])
    shapes = [jobs[0].shape]
    _, held = await q.finish_and_claim([], "w", shapes, 10)
    while held:
        _, held = await q.finish_and_claim([(c.job.id, c.token, {}) for c in held], "w", shapes, 10)
    assert (await q.stats()).totals.get("completed") == 300
    assert await aredis.xlen(q.keys.events) <= 10 + 100


def test_one_decoder_reads_a_message_of_one_event_or_of_several() -> None:
    one = {"event": "completed", "queue": "default", "job": "a", "worker": "w"}
    assert pubsub_events(json.dumps(one).encode()) == [one]
    several = {"event": "completed", "queue": "default", "jobs": [{"job": "a", "worker": "w"}, {"job": "b"}]}
    assert pubsub_events(json.dumps(several)) == [one, {"event": "completed", "queue": "default", "job": "b"}]
    # Not an event: nothing (a reader skips it), never an error.
    assert pubsub_events(b"not json") == pubsub_events(b"[3]") == pubsub_events(None) == []
    assert pubsub_events(json.dumps({**several, "jobs": [3, {"job": "c"}]})) == [
        {"event": "completed", "queue": "default", "job": "c"}
    ]


async def test_job_wait_finds_its_job_among_the_completions_of_one_message(queue: Queue, aredis: Any) -> None:
    # A waiter subscribed before the round trip: its job's `completed` comes in one message with two others.
    # (A waiter also re-reads the record every second without a message: this checks it ends, not how fast.)
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(3)])
    _, leased = await queue.finish_and_claim([], "w", [jobs[0].shape], 3)
    waiter = asyncio.create_task(queue.wait(jobs[1].id, timeout_s=10))
    for _ in range(1_000):  # until the waiter is subscribed (Redis's count: no event to wait on)
        if dict(await aredis.pubsub_numsub("complete_job"))[b"complete_job"]:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # past the waiter's first read of the record, so the message is what wakes it
    codes, _ = await queue.finish_and_claim(
        [(c.job.id, c.token, {}) for c in leased], "w", [jobs[0].shape], 3
    )
    assert codes == [1, 1, 1]
    assert (await waiter).status is JobStatus.COMPLETED


async def test_a_round_trip_ends_a_cancel_request_and_a_limits_charge_of_the_job_it_completes(
    queue: Queue, aredis: Any
) -> None:
    # With a customer's limit and a cancel request in Redis, the keys the round trip skips while they are empty
    # are there: the completion must clear the request and free the slot, and the claim must honour the cap.
    await queue.limits.set("acme", max_in_flight=1)
    a, b = await queue.submit_many(
        [{"service": "echo", "customer_id": "acme"}, {"service": "echo", "customer_id": "acme"}]
    )
    shapes = [a.shape]
    _, first = await queue.finish_and_claim([], "w", shapes, 2)
    assert [c.job.id for c in first] == [a.id]  # the cap holds the second back
    assert await queue.cancel(a.id) == "requested"
    assert await aredis.hexists(queue.keys.cancels, a.id)
    codes, second = await queue.finish_and_claim([(a.id, first[0].token, {})], "w", shapes, 2)
    assert codes == [1] and [c.job.id for c in second] == [b.id]
    assert not await aredis.hexists(queue.keys.cancels, a.id)
    assert (await queue.limits.get("acme")).in_flight == 1
    codes, none = await queue.finish_and_claim([(b.id, second[0].token, {})], "w", shapes, 2)
    assert codes == [1] and none == []
    assert (await queue.limits.get("acme")).in_flight == 0


async def test_a_paused_queue_still_takes_the_completions_of_a_round_trip(queue: Queue) -> None:
    a, b = await queue.submit_many([{"service": "echo"}, {"service": "echo"}])
    shapes = [a.shape]
    _, first = await queue.finish_and_claim([], "w", shapes, 1)
    await queue.pauses.pause()
    codes, none = await queue.finish_and_claim([(a.id, first[0].token, {})], "w", shapes, 1)
    assert codes == [1] and none == []
    assert (await queue.get(a.id)).status is JobStatus.COMPLETED
    assert (await queue.get(b.id)).status is JobStatus.PENDING


async def test_a_heartbeat_reads_and_renews_every_lease_in_one_command_each(
    queue: Queue, aredis: Any
) -> None:
    # Before: HGET owner, ZADD leases and HEXISTS cancels for each lease: 27 commands for 8 leases. Now one HMGET
    # of the leases, one EXISTS of the cancel requests (and their HMGET while any is pending) and one ZADD, with
    # TIME and the two marks of life: 6 or 7.
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(8)])
    shapes = [jobs[0].shape]
    _, leased = await queue.finish_and_claim([], "w", shapes, 8)
    leases = {c.job.id: c.token for c in leased}
    await aredis.config_resetstat()
    assert set((await queue.heartbeat("w", leases, shapes)).values()) == {"ok"}
    calls = await command_calls(aredis)
    assert "hget" not in calls and "hexists" not in calls and calls.get("hmget") == 1, calls
    # TIME, ZADD seen, HSET live, HMGET owner, EXISTS cancels, ZADD leases
    assert sum(calls.values()) == 6, calls
    # A cancel request, a lease lost to a completion, the others renewed: one answer each, in order.
    assert await queue.cancel(leased[1].job.id) == "requested"
    await queue.complete(leased[2].job.id, leased[2].token, {})
    before = await aredis.zscore(queue.keys.leases, leased[0].job.id)
    await aredis.config_resetstat()
    answers = await queue.heartbeat("w", leases, shapes)
    assert sum((await command_calls(aredis)).values()) == 7  # and the HMGET of the cancel requests
    assert [answers[c.job.id] for c in leased[:4]] == ["ok", "cancelled", "lost", "ok"]
    assert await aredis.zscore(queue.keys.leases, leased[0].job.id) >= before
    assert await aredis.zscore(queue.keys.leases, leased[2].job.id) is None  # a lost lease is not renewed
    assert (await queue.heartbeat("w", {leased[0].job.id: "not-its-token"}, shapes))[
        leased[0].job.id
    ] == "lost"

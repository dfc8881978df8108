"""The quiet round trip's batch path (includes/quiet_trip.lua, issue 14) builds its events' JSON as text, parses
owner records and metas with plain finds (once per distinct record rest / meta prefix) and takes a batch's jobs
with ZRANGE + ZREMRANGEBYRANK. What it writes and publishes must be what the full path (complete.lua, claim.lua,
cjson over tables) writes, for any id, worker id or service, however hostile to JSON, and for records of any
form the previous version wrote: a worker id holding '|', a claim time longer than the fast search expects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.queue import Queue
from appliance.queue.events import EventKind
from tests.pubsub import json_messages

#: What JSON escapes (a quote, a backslash, control characters, cjson's `\/`), and bytes beyond ASCII.
HOSTILE_IDS = ['q"1', "b\\s", "c\x01t\n", "é/ü", "plain-4"]
HOSTILE_SERVICE = 's"v\\c\t/ü'
HOSTILE_WORKER = 'w"|\\\x02|é'  # holds '|' too: the owner record's worker part


@pytest.fixture
async def paths(two: tuple[Queue, Queue]) -> tuple[Queue, Queue]:
    """`two`, with a feature key on `full`: its round trips take the full path."""
    await two[1].client.hset(two[1].keys.cancels, "no-such-job", "1")
    return two


async def hostile_jobs(q: Queue) -> tuple[str, list[str]]:
    """Jobs whose ids and service JSON must escape, as data written outside the API's validation would be:
    submitted plainly, then each record moved to its hostile id and the meta's service replaced."""
    r, k = q.client, q.keys
    jobs = [await q.submit({"service": "svc", "payload": {"n": n}}) for n in range(len(HOSTILE_IDS))]
    shape = jobs[0].shape
    ready = k.ready(shape)
    for job, new in zip(jobs, HOSTILE_IDS, strict=True):
        spec = json.loads(await r.hget(k.spec, job.id))
        spec["id"] = new
        meta = (await r.hget(k.meta, job.id)).split("|")
        meta[1] = HOSTILE_SERVICE
        score = await r.zscore(ready, job.id)
        await r.hset(k.spec, new, json.dumps(spec))
        await r.hset(k.meta, new, "|".join(meta))
        await r.hset(k.state, new, "pending")
        await r.zadd(ready, {new: score})
        await r.zrem(ready, job.id)
        await r.hdel(k.spec, job.id)
        await r.hdel(k.meta, job.id)
        await r.hdel(k.state, job.id)
    return shape, HOSTILE_IDS


async def batch_trips(q: Queue, shape: str) -> tuple[list[Any], list[tuple[str, dict[str, Any]]]]:
    """The five jobs claimed in one round trip, completed in the next: the answers and the stream's events."""
    _, leased = await q.finish_and_claim([], HOSTILE_WORKER, [shape], 5)
    codes, more = await q.finish_and_claim(
        [(c.job.id, c.token, {"r": c.job.id}) for c in leased], HOSTILE_WORKER, [shape], 5
    )
    answers = [[(c.job.id, c.attempt, c.job.payload) for c in leased], codes, more]
    events = [
        (e.kind.value, {f: v for f, v in e.fields.items() if f not in ("wait_ms", "duration_ms")})
        for e in await q.events.window(0, 100)
        if e.kind in (EventKind.CLAIMED, EventKind.COMPLETED)
    ]
    return answers, events


async def test_hostile_ids_services_and_worker_ids_come_out_of_a_batch_as_the_full_path_writes_them(
    paths: tuple[Queue, Queue], aredis: Any
) -> None:
    quiet, full = paths
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_claimed", "complete_job")
    seen = []
    for q in (quiet, full):
        shape, ids = await hostile_jobs(q)
        answers, events = await batch_trips(q, shape)
        assert [a[0] for a in answers[0]] == ids and answers[1] == [1] * len(ids) and answers[2] == []
        assert [(kind, e["job"]) for kind, e in events] == [("claimed", i) for i in ids] + [
            ("completed", i) for i in ids
        ]
        assert all(e["worker"] == HOSTILE_WORKER and e["service"] == HOSTILE_SERVICE for _, e in events)
        info = await q.client.hmget(q.keys.info, ids)
        assert all(v.startswith(HOSTILE_WORKER + "|") for v in info)
        seen.append((answers, events))
    assert seen[0] == seen[1]
    # The pub/sub copies (one message per kind per round trip, expanded as every subscriber expands them).
    events = await json_messages(pubsub, 4 * len(HOSTILE_IDS))
    await pubsub.aclose()
    by_queue: dict[str, list[Any]] = {}
    for channel, event in events:
        plain = {f: v for f, v in event.items() if f not in ("wait_ms", "duration_ms")}
        by_queue.setdefault(event["queue"], []).append((channel, plain))
    assert by_queue["quiet"] == [(c, {**e, "queue": "quiet"}) for c, e in by_queue["full"]]
    assert [e["job"] for _, e in by_queue["quiet"]] == HOSTILE_IDS * 2
    assert all(
        e["worker"] == HOSTILE_WORKER and e["service"] == HOSTILE_SERVICE for _, e in by_queue["quiet"]
    )


async def test_owner_records_the_previous_version_wrote_are_read_as_before(
    paths: tuple[Queue, Queue],
) -> None:
    """Leases whose records hold a worker id with '|' and claim times of any length (the search for the last '|'
    starts 15 bytes before the end; a longer claim time takes the pattern), completed singly and in a batch; a
    wrong token and a record without a worker part lose. The same on the quiet and the full path."""
    for q in paths:
        r, k = q.client, q.keys
        jobs = [await q.submit({"service": "svc", "payload": {"n": n}}) for n in range(6)]
        shape = jobs[0].shape
        _, leased = await q.finish_and_claim([], "a|b", [shape], 6)
        now_ms = int((await r.time())[0]) * 1000
        claimed = {  # id -> claim time as recorded (ms): the usual 13 digits, a short one, 18 digits
            leased[0].job.id: str(now_ms - 5),
            leased[1].job.id: "7",
            leased[2].job.id: str(now_ms - 5),
            leased[3].job.id: "00000" + str(now_ms - 9),
        }
        for c in leased[:4]:
            await r.hset(k.owner, c.job.id, f"{c.token}|a|b|{claimed[c.job.id]}")
        await r.hset(k.owner, leased[5].job.id, f"{leased[5].token}|{now_ms}")  # one '|': no worker part
        codes, _ = await q.finish_and_claim([(leased[0].job.id, leased[0].token, {})], "a|b", [shape], 0)
        assert codes == [1]
        batch = [(c.job.id, c.token, {}) for c in leased[1:4]]
        batch += [(leased[4].job.id, "wrong", {}), (leased[5].job.id, leased[5].token, {})]
        codes, _ = await q.finish_and_claim(batch, "a|b", [shape], 0)
        assert codes == [1, 1, 1, -2, -2]
        info = await r.hmget(k.info, [c.job.id for c in leased[:4]])
        assert [v.rsplit("|", 1)[0].rsplit("|", 1) for v in info] == [
            ["a|b", claimed[c.job.id]] for c in leased[:4]
        ]
        durations = {
            e.job: e.number("duration_ms")
            for e in await q.events.window(0, 100)
            if e.kind is EventKind.COMPLETED
        }
        assert durations[leased[1].job.id] >= now_ms - 7  # claimed 7 ms after the epoch
        assert 9 <= durations[leased[3].job.id] < 60_000  # leading zeros
        assert all(e.worker == "a|b" for e in await q.events.window(0, 100) if e.kind is EventKind.COMPLETED)

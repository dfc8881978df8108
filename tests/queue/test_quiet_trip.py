"""finish_claim.lua's round trip on a quiet queue (includes/quiet_trip.lua: no charged leases, cancel requests,
waiting children, limits or pauses) does what complete.lua and claim.lua do on that queue: the same scenario run
once quiet and once with a feature key present (a cancel request for a job that does not exist, so the full path
runs) leaves the same records, events and answers. And a feature switched on between two round trips is
honoured by the next one."""

from __future__ import annotations

import json
import re
from typing import Any

from appliance.queue import JobStatus, Queue, QueueSettings
from tests.pubsub import json_messages

WEIRD_WORKER = 'w"q\\x'  # JSON escapes it: the one-event message must still decode to it


async def scenario(q: Queue) -> tuple[list[Any], list[str]]:
    """Round trips of a one-shape class and a two-shape class, single and batched, a lost lease, a duplicate in a
    batch, a worker id JSON must escape, and the last trip that finds nothing and registers the worker idle."""
    services = ["a", "b", "a", "a", "b", "a", "b", "b"]
    jobs = [await q.submit({"service": s, "payload": {"n": i}}) for i, s in enumerate(services)]
    ids = [j.id for j in jobs]
    a, b = jobs[0].shape, jobs[1].shape
    seen: list[Any] = []

    def note(codes: list[int], claimed: list[Any], registered: bool | None = None) -> list[Any]:
        hints = [list(q.leases.worker_class(shapes).hint) for shapes in ([a], [a, b])]
        seen.append(
            (codes, [(ids.index(c.job.id), c.attempt, c.job.payload) for c in claimed], registered, hints)
        )
        return claimed

    leases = q.leases
    one = note(*await q.finish_and_claim([], "w1", [a], 1))  # job 0
    one = note(*await q.finish_and_claim([(one[0].job.id, one[0].token, {"r": 0})], WEIRD_WORKER, [a], 1))
    both = note(*await q.finish_and_claim([], "w2", [a, b], 3))  # job 1 only: job 3 (a) ranks before job 4
    lost = [(one[0].job.id, "not-the-token", {})]
    one = note(*await q.finish_and_claim(lost, "w1", [a], 1))  # code -2, and job 3
    done = [(both[0].job.id, both[0].token, {"r": 1}), (both[0].job.id, both[0].token, {"r": 1})]
    both = note(*await q.finish_and_claim(done, "w2", [a, b], 3))  # the duplicate once
    channel = q.keys.hub_channel("h1")
    while both or one:
        outcomes = [(c.job.id, c.token, {"x": "y" * i}) for i, c in enumerate(both + one)]
        note(*await leases.finish_and_claim_or_idle(outcomes, "w2", [a, b], 2, idle_channel=channel))
        one = []
        both = [c for c in (await q.finish_and_claim([], "w2", [a, b], 2))[1]]
        seen.append(("more", [ids.index(c.job.id) for c in both]))
    return seen, ids


async def snapshot(q: Queue, ids: list[str]) -> dict[str, Any]:
    """What the round trips left, with ids as submission indexes and times left out."""
    r, k = q.client, q.keys

    def t(v: Any) -> Any:
        return v.decode() if isinstance(v, bytes) else v

    def col(values: list[Any]) -> list[Any]:
        return [t(v) for v in values]

    def indexes(members: list[Any]) -> list[int]:
        return sorted(ids.index(t(m)) for m in members)

    owners = col(await r.hmget(k.owner, ids))
    infos = col(await r.hmget(k.info, ids))

    def plain(pairs: Any) -> list[Any]:
        """An event's (name, value) pairs in their order: the job as its index, no times."""
        return [
            (f, str(ids.index(v)) if f == "job" else v)
            for f, v in pairs
            if f not in ("duration_ms", "wait_ms")
        ]

    # Each entry's fields in order; an entry of several events (`jobs`) with each member's in its JSON order.
    entries = [
        [(f, [plain(m.items()) for m in json.loads(v)]) if f == "jobs" else (f, v) for f, v in plain(pairs)]
        for pairs in ([(t(f), t(v)) for f, v in e[1].items()] for e in await r.xrange(k.events))
    ]
    return {
        "state": col(await r.hmget(k.state, ids)),
        "attempts": col(await r.hmget(k.attempts, ids)),
        "results": col(await r.hmget(k.results, ids)),
        # token.n|worker|claimed ms, worker|claimed ms|finished ms: the tokens are random, the times the clock's.
        "owner": [o and re.sub(r"^[0-9a-f]{24}\.\d+\|(.*)\|\d+$", r"\1", o) for o in owners],
        "info": [i and re.sub(r"^(.*)\|\d+\|\d+$", r"\1", i) for i in infos],
        "leases": indexes(await r.zrange(k.leases, 0, -1)),
        "done": indexes(await r.zrange(k.done, 0, -1)),
        "counts": await r.hgetall(k.counts),
        "heads": sorted(await r.zrange(k.heads, 0, -1)),
        "waiting": {t(w): t(c) == k.hub_channel("h1") for w, c in (await r.hgetall(k.waiting)).items()},
        "events": entries,
    }


async def test_a_quiet_round_trip_writes_what_complete_and_claim_write(
    two: tuple[Queue, Queue], aredis: Any
) -> None:
    quiet, full = two
    pubsub = aredis.pubsub()
    await pubsub.subscribe("job_claimed", "complete_job")
    seen_quiet, ids_quiet = await scenario(quiet)
    await full.client.hset(full.keys.cancels, "no-such-job", "1")  # not quiet: complete.lua and claim.lua run
    seen_full, ids_full = await scenario(full)
    assert seen_quiet == seen_full
    left = await snapshot(quiet, ids_quiet)
    assert left == await snapshot(full, ids_full)
    # Every stream event has its pub/sub copy. A batch's events of one kind share one entry (includes/emit.lua
    # `emit_many`), an entry of one event is as it always was.
    entries = [dict(e) for e in left["events"]]
    assert any("jobs" in e for e in entries) and all(len(e["jobs"]) >= 2 for e in entries if "jobs" in e)
    count = 2 * sum(len(e.get("jobs") or [e]) for e in entries if e["event"] in ("claimed", "completed"))
    events = await json_messages(pubsub, count)
    await pubsub.aclose()
    by_queue: dict[str, list[Any]] = {"quiet": [], "full": []}
    for channel, event in events:
        ids = ids_quiet if event["queue"] == "quiet" else ids_full
        times = {"duration_ms", "wait_ms", "queue"}
        by_queue[event["queue"]].append(
            (channel, {f: str(ids.index(v)) if f == "job" else v for f, v in event.items() if f not in times})
        )
    assert by_queue["quiet"] == by_queue["full"]
    assert any(e.get("worker") == WEIRD_WORKER for _, e in by_queue["quiet"])


async def test_a_one_shape_round_trip_honours_a_pause_of_its_shape_switched_on_between_trips(
    redis_url: str,
) -> None:
    # A class of one shape claims without walking `heads`, where a paused shape is passed over: the pause (a
    # feature key) sends the round trip through claim.lua, which honours it.
    q = await Queue.connect(redis_url, settings=QueueSettings(claim_slack_ms=0))
    await q.client.flushall()
    a, b = await q.submit_many([{"service": "echo"}, {"service": "echo"}])
    _, first = await q.finish_and_claim([], "w", [a.shape], 1)
    await q.pauses.pause(shape=a.shape)
    codes, none = await q.finish_and_claim([(a.id, first[0].token, {})], "w", [a.shape], 1)
    assert codes == [1] and none == []
    assert (await q.get(a.id)).status is JobStatus.COMPLETED
    assert (await q.get(b.id)).status is JobStatus.PENDING
    await q.pauses.resume(shape=a.shape)
    _, then = await q.finish_and_claim([], "w", [a.shape], 1)
    assert [c.job.id for c in then] == [b.id]
    await q.close()


async def test_the_client_calls_the_quiet_script_until_a_feature_is_in_use_and_again_once_none_is(
    redis_url: str,
) -> None:
    # finish_claim_quiet.lua takes 19 keys, not 30; it answers 'busy' and changes nothing when a feature is in use
    # (here a cancel request), and the client calls finish_claim.lua, whose answer says when none is any more.
    q = await Queue.connect(redis_url, settings=QueueSettings(claim_slack_ms=0))
    await q.client.flushall()
    jobs = await q.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(4)])
    shapes = [jobs[0].shape]
    called: list[tuple[str, int]] = []
    run = q.conn.run

    async def recording(call: Any, **options: Any) -> Any:
        called.append((call[0], len(call[1])))
        return await run(call, **options)

    q.conn.run = recording  # type: ignore[method-assign]
    _, held = await q.finish_and_claim([], "w", shapes, 1)
    del called[:]
    _, held = await q.finish_and_claim([(held[0].job.id, held[0].token, {})], "w", shapes, 1)
    assert called == [("finish_claim_quiet", 20)]  # 19 and the candidate's ready index
    assert await q.cancel(held[0].job.id) == "requested"
    del called[:]
    codes, held = await q.finish_and_claim([(held[0].job.id, held[0].token, {})], "w", shapes, 1)
    assert codes == [1] and [c.job.id for c in held] == [jobs[2].id]
    assert called == [("finish_claim_quiet", 20), ("finish_claim", 31)]  # 'busy': the request was cleared
    assert not await q.client.hexists(q.keys.cancels, jobs[1].id) and not q.leases.quiet
    del called[:]
    codes, held = await q.finish_and_claim([(held[0].job.id, held[0].token, {})], "w", shapes, 1)
    assert codes == [1] and [c.job.id for c in held] == [jobs[3].id]
    assert called == [("finish_claim", 31)] and q.leases.quiet  # nothing in use any more: quiet next time
    del called[:]
    await q.finish_and_claim([(held[0].job.id, held[0].token, {})], "w", shapes, 1)
    assert called == [("finish_claim_quiet", 20)]
    assert (await q.stats()).totals.get("completed") == 4
    await q.close()

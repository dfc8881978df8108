"""claim.lua's worker classes, guesses and batches, through the real scripts on a real Redis."""

from __future__ import annotations

import json
import random

import pytest

from appliance.queue import Capabilities, JobStatus, LeaseLost, Queue, WorkerSession
from appliance.queue.shapes import WorkerClass


async def _tagged(queue: Queue, tag: str, **extra: object):
    return await queue.submit({"service": "echo", "requirements": {"tags": [tag]}, **extra})


async def test_a_wrong_guess_changes_nothing_and_names_the_best_shape(make_queue, aredis) -> None:
    queue = await make_queue(claim_slack_ms=0)
    early = await _tagged(queue, "a")
    late = await _tagged(queue, "b")
    worker_class = queue.worker_class([early.shape, late.shape])
    await queue.register_class(worker_class)
    worker_class.take_hint(late.shape)
    call = queue.leases.claim_call("w", worker_class, "tok", 1)
    before = await aredis.zrange(queue.keys.heads, 0, -1, withscores=True)
    reply = await queue.conn.run(call)
    assert reply == ["retry", f"{early.shape},{late.shape}"]
    assert await aredis.zrange(queue.keys.heads, 0, -1, withscores=True) == before
    assert (await queue.get(early.id)).status is JobStatus.PENDING
    assert (await queue.get(late.id)).status is JobStatus.PENDING


async def test_within_the_slack_a_candidate_shape_is_taken_instead_of_racing(make_queue) -> None:
    queue = await make_queue(claim_slack_ms=60_000)
    early = await _tagged(queue, "a")
    late = await _tagged(queue, "b")
    urgent = await _tagged(queue, "c", priority=5)  # five priority steps (5 minutes) ahead: beyond the slack
    worker_class = queue.worker_class([early.shape, late.shape, urgent.shape])
    worker_class.take_hint(late.shape)
    assert [c.job.id for c in await queue.claim_many("w", worker_class.shapes, 1)] == [urgent.id]
    worker_class.take_hint(late.shape)
    assert [c.job.id for c in await queue.claim_many("w", worker_class.shapes, 1)] == [late.id]
    assert [c.job.id for c in await queue.claim_many("w", worker_class.shapes, 1)] == [early.id]


async def test_claims_follow_the_global_order_across_64_shapes(queue: Queue) -> None:
    rng = random.Random(7)
    tags = [f"t{i}" for i in range(64)]
    jobs = [await _tagged(queue, rng.choice(tags), priority=rng.randrange(4)) for _ in range(300)]
    shapes = sorted({j.shape for j in jobs})
    expected = [j.id for j in sorted(jobs, key=lambda j: (-j.priority, jobs.index(j)))]
    got = []
    while claimed := await queue.claim("w", shapes):
        got.append(claimed.job.id)
    assert got == expected


async def test_a_batch_stops_where_another_shape_ranks_first(make_queue) -> None:
    queue = await make_queue(claim_slack_ms=0)
    a = [await _tagged(queue, "a") for _ in range(3)]
    b = await _tagged(queue, "b")
    a += [await _tagged(queue, "a") for _ in range(2)]
    shapes = [a[0].shape, b.shape]
    first = await queue.claim_many("w", shapes, 10)
    assert [c.job.id for c in first] == [j.id for j in a[:3]]
    second = await queue.claim_many("w", shapes, 10)
    assert [c.job.id for c in second] == [b.id]
    third = await queue.claim_many("w", shapes, 10)
    assert [c.job.id for c in third] == [j.id for j in a[3:]]
    assert await queue.claim_many("w", shapes, 10) == []


async def test_each_job_of_a_batch_has_its_own_fencing_token(queue: Queue) -> None:
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(4)])
    batch = await queue.claim_many("w", [jobs[0].shape], 4)
    assert [c.job.id for c in batch] == [j.id for j in jobs]
    assert len({c.token for c in batch}) == 4
    assert [c.job.payload for c in batch] == [{"n": i} for i in range(4)]
    assert all(c.attempt == 1 and c.job.status is JobStatus.CLAIMED for c in batch)
    with pytest.raises(LeaseLost):
        await queue.complete(batch[1].job.id, batch[0].token, None)
    for claimed in batch:
        await queue.complete(claimed.job.id, claimed.token, {"ok": True})
        assert (await queue.get(claimed.job.id)).status is JobStatus.COMPLETED


async def test_the_class_set_is_rewritten_when_it_has_expired(queue: Queue, aredis) -> None:
    first = await _tagged(queue, "a")
    second = await _tagged(queue, "a")
    assert (await queue.claim("w", [first.shape])).job.id == first.id
    worker_class = queue.worker_class([first.shape])
    assert await aredis.pttl(queue.keys.worker_class(worker_class.class_id)) > 0
    await aredis.delete(queue.keys.worker_class(worker_class.class_id))
    assert (await queue.claim("w", [first.shape])).job.id == second.id


async def test_the_walk_passes_many_shapes_of_other_classes(queue: Queue) -> None:
    # 300 shapes that this worker cannot serve rank ahead of its only job: the walk pages through them.
    for i in range(300):
        await _tagged(queue, f"other{i}", priority=5)
    mine = await _tagged(queue, "mine")
    claimed = await queue.claim("w", [mine.shape])
    assert claimed is not None and claimed.job.id == mine.id
    assert await queue.claim("w", [mine.shape]) is None


async def test_workers_with_equal_shape_lists_share_one_class(queue: Queue, aredis) -> None:
    job = await _tagged(queue, "a")
    caps = Capabilities(services=["echo"], tags=["a"])
    one = await WorkerSession.open(queue, "w1", caps)
    two = await WorkerSession.open(queue, "w2", caps)
    try:
        assert one.shapes == two.shapes == [job.shape]
        assert (await one.claim()).job.id == job.id
        assert await two.claim() is None
        classes = [k async for k in aredis.scan_iter(match=queue.keys.worker_class("*"))]
        assert classes == [queue.keys.worker_class(WorkerClass.of((job.shape,)).class_id).encode()]
    finally:
        await one.close()
        await two.close()


async def test_complete_many_writes_each_outcome_and_fences_each_token(queue: Queue) -> None:
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(3)])
    batch = await queue.claim_many("w", [jobs[0].shape], 3)
    stale = batch[1].token[:-1] + "9"
    codes = await queue.complete_many(
        [
            (batch[0].job.id, batch[0].token, {"n": 0}),
            (batch[1].job.id, stale, {"n": 1}),
            (batch[2].job.id, batch[2].token, {"n": 2}),
        ]
    )
    assert codes == [1, -2, 1]
    assert (await queue.get(batch[0].job.id)).result == {"n": 0}
    assert (await queue.get(batch[1].job.id)).status is JobStatus.CLAIMED
    assert (await queue.get(batch[2].job.id)).status is JobStatus.COMPLETED
    assert await queue.complete_many([(batch[1].job.id, batch[1].token, None)]) == [1]
    assert (await queue.stats()).totals.get("completed") == 3


async def test_a_session_that_keeps_losing_races_comes_back_at_once(queue: Queue, monkeypatch) -> None:
    job = await _tagged(queue, "a")
    session = await WorkerSession.open(queue, "w", Capabilities(services=["echo"], tags=["a"]))
    try:
        monkeypatch.setattr("appliance.queue.lease.CLAIM_TRIES", 1)
        queue.worker_class(session.shapes).take_hint("0" * 16)  # a shape that is never the best
        assert await session.claim() is None
        assert await session.wait_for_work(timeout_s=0.01) is True
        assert (await session.claim()).job.id == job.id
        assert await session.claim() is None
        assert await session.wait_for_work(timeout_s=0.01) is False
    finally:
        await session.close()


async def test_finish_and_claim_completes_and_leases_in_one_round(queue: Queue, aredis) -> None:
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(5)])
    shapes = [jobs[0].shape]
    codes, first = await queue.finish_and_claim([], "w", shapes, 2)
    assert codes == [] and [c.job.id for c in first] == [j.id for j in jobs[:2]]
    outcomes = [(c.job.id, c.token, {"n": c.job.payload["n"]}) for c in first]
    codes, second = await queue.finish_and_claim(outcomes, "w", shapes, 2)
    assert codes == [1, 1] and [c.job.id for c in second] == [j.id for j in jobs[2:4]]
    assert (await queue.get(jobs[0].id)).result == {"n": 0}
    # A Redis that lost its functions (restart without persistence): nothing is lost, the library comes back.
    await aredis.function_flush()
    outcomes = [(c.job.id, c.token, None) for c in second]
    codes, third = await queue.finish_and_claim(outcomes, "w", shapes, 2)
    assert codes == [1, 1] and [c.job.id for c in third] == [jobs[4].id]
    codes, none = await queue.finish_and_claim([(jobs[4].id, third[0].token, None)], "w", shapes, 2)
    assert codes == [1] and none == []
    assert (await queue.stats()).totals.get("completed") == 5


async def test_a_round_of_finish_and_claim_is_one_script_call(queue: Queue, aredis) -> None:
    # Before: complete.lua and claim.lua pipelined, two script calls per round (two dispatches and replies, and the
    # client's pipeline). Now finish_claim.lua runs both in one call.
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(4)])
    shapes = [jobs[0].shape]
    _, first = await queue.finish_and_claim([], "w", shapes, 2)
    await aredis.config_resetstat()
    codes, second = await queue.finish_and_claim([(c.job.id, c.token, {}) for c in first], "w", shapes, 2)
    stats = await aredis.info("commandstats")
    scripts = sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval", "fcall")
    )
    assert codes == [1, 1] and [c.job.id for c in second] == [j.id for j in jobs[2:]]
    assert scripts == 1, stats
    assert (await queue.stats()).totals.get("completed") == 2


async def test_the_default_slack_never_reorders_priorities(make_queue) -> None:
    queue = await make_queue()
    assert 0 < queue.settings.claim_slack_ms * 10 < queue.settings.priority_step_ms
    rng = random.Random(3)
    jobs = [await _tagged(queue, f"t{i % 16}", priority=i % 3) for i in range(90)]
    shapes = sorted({j.shape for j in jobs})
    worker_class = queue.worker_class(shapes)
    got = []
    while True:
        # Stale hints, as concurrent workers of one class leave each other: any four shapes.
        worker_class.take_hint(",".join(rng.sample(shapes, 4)))
        claimed = await queue.claim("w", shapes)
        if claimed is None:
            break
        got.append(claimed.job)
    assert sorted(j.id for j in got) == sorted(j.id for j in jobs)
    assert [j.priority for j in got] == sorted((j.priority for j in jobs), reverse=True)


async def test_submit_many_reloads_a_library_the_server_lost(queue: Queue, aredis) -> None:
    await aredis.function_flush()
    jobs = await queue.submit_many([{"service": "echo", "payload": {"n": i}} for i in range(3)])
    assert [(await queue.get(j.id)).status for j in jobs] == [JobStatus.PENDING] * 3
    assert (await queue.stats()).totals.get("submitted") == 3


async def test_a_multi_gpu_job_goes_to_a_worker_bound_to_enough_gpus(queue: Queue) -> None:
    """gpu_count and machine_type are shapes like any requirement: the claim walks the shape index, no scan."""
    one_gpu = await WorkerSession.open(
        queue, "m1-gpu0", Capabilities(services=["comfyui"], gpu_count=1, machine_type="gpu")
    )
    two_gpus = await WorkerSession.open(
        queue, "m2-gpu0", Capabilities(services=["comfyui"], gpu_count=2, machine_type="gpu")
    )
    api = await WorkerSession.open(queue, "m3-echo0", Capabilities(services=["comfyui"], machine_type="api"))
    try:
        big = await queue.submit({"service": "comfyui", "requirements": {"gpu_count": 2}})
        on_api = await queue.submit({"service": "comfyui", "requirements": {"machine_type": "api"}})
        for session in (one_gpu, two_gpus, api):
            await session.refresh_shapes()
        assert await one_gpu.claim() is None  # neither job fits a worker bound to one GPU
        claimed = await two_gpus.claim()
        assert claimed is not None and claimed.job.id == big.id
        assert await two_gpus.claim() is None  # the api-only job is not for a gpu machine
        claimed = await api.claim()
        assert claimed is not None and claimed.job.id == on_api.id
        shapes = [json.loads(r) for r in (await queue.client.hgetall(queue.keys.shapes)).values()]
        assert {"gpu_count": 2, "service": "comfyui"} in shapes
        assert {"machine_type": "api", "service": "comfyui"} in shapes
    finally:
        for session in (one_gpu, two_gpus, api):
            await session.close()

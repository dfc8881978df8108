"""The scripts' headers are the contract: the wrappers pass exactly the KEYS they declare, and every
return code they list has its name in ScriptCode."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from appliance.queue import Capabilities, Queue, WorkerSession
from appliance.queue.errors import ScriptCode
from appliance.queue.scripts import (
    SCRIPT_NAMES,
    ScriptSet,
    declared_keys,
    expand,
    load_sources,
    return_codes,
)
from appliance.queue.specs import SPECS


def test_every_return_code_in_a_header_is_known() -> None:
    known = {int(c) for c in ScriptCode}
    for name in SCRIPT_NAMES:
        assert return_codes(name) <= known, name


def test_every_script_documents_its_keys_and_returns() -> None:
    for name in SCRIPT_NAMES:
        source = expand(open(f"appliance/queue/scripts/{name}.lua").read())
        assert "KEYS[1]" in source and "Returns:" in source, name
        assert "local rcall = redis.call" in source, name
        # Keys are only read from KEYS: no script concatenates a key name of its own.
        assert "..KEYS" not in source.replace(" ", ""), name


def test_includes_cannot_recurse() -> None:
    with pytest.raises(ValueError):
        expand("-- @include emit\n", seen=("emit",))


async def test_wrappers_pass_exactly_the_declared_keys(queue: Queue) -> None:
    calls: list[tuple[str, int]] = []
    original = ScriptSet.call

    async def recording(
        self: ScriptSet, client: object, name: str, keys: list[str], args: list[object], **options: Any
    ):
        calls.append((name, len(keys)))
        return await original(self, client, name, keys, args, **options)

    queue.scripts.call = recording.__get__(queue.scripts)  # type: ignore[method-assign]
    job = await queue.submit({"service": "echo"})
    other = await queue.submit({"service": "echo"})
    third = await queue.submit({"service": "echo"})
    session = await WorkerSession.open(queue, "w", Capabilities(services=["echo"]))
    try:
        claimed = await session.claim()
        await session.heartbeat({claimed.job.id: claimed.token})
        await queue.progress(job.id, claimed.token, 10)
        # A child waiting for it: the completion releases it (code 8), and the client requeues it (requeue.lua).
        child = await queue.submit({"service": "echo", "after": [job.id]})
        await queue.complete(job.id, claimed.token, {})
        assert (await queue.require(child.id)).status.value == "pending"
        second = await session.claim()
        await queue.fail(other.id, second.token, "x", retryable=True)
        again = await session.claim()
        await queue.release(again.job.id, again.token)
        await queue.cancel(third.id)
        await session.claim()
        await asyncio.sleep(1.1)
        await queue.reap(force=True)
        await queue.schedules.add({"id": "s", "every_s": 60, "job": {"service": "echo"}})
        await queue.schedules.materialise(now_ms=2**50)  # far ahead: due, submitted, moved on
        await queue.schedules.remove("s")
        await queue.submit({"service": "echo", "customer_id": "acme"})
        await queue.pauses.pause(customer="acme")
        while (await queue.stats()).held == 0:  # claims take what waits ahead, then hold acme's job aside
            await queue.claim("w", session.shapes)
        assert await queue.pauses.resume(customer="acme") == 1  # unhold
        await queue.limits.set("acme", max_in_flight=0)  # limits_count; unlimit finds nothing held
        while (await queue.stats()).limited == 0:  # the cap holds acme's job aside
            await queue.claim("w", session.shapes)
        await queue.limits.remove("acme")  # unlimit puts it back
        assert session.hub is not None
        await session.hub.pass_on([job.shape])
        while await session.claim() is not None:
            pass
        assert await session.wait_for_work(0.01) is False  # registered as idle (idle.lua), nothing came
        await queue.submit({"service": "echo"})
        assert await session.wait_for_work(10)  # the idle session is woken for it (through the hub)
        last = await session.claim()
        assert last is not None
        await queue.fail(last.job.id, last.token, "x", retryable=False)
        await queue.retry(last.job.id)
        await queue.submit({"service": "echo"})  # waits behind it: the claim's hint says so
        retried = await session.claim()
        assert retried is not None
        codes, more = await session.finish_and_claim([(retried.job.id, retried.token, {})], 1)
        assert codes == [1]  # finish_claim_quiet: no feature in use
        leased = more[0] if more else await session.claim()
        assert leased is not None and await queue.cancel(leased.job.id) == "requested"
        codes, _ = await session.finish_and_claim([(leased.job.id, leased.token, {})], 1)
        assert codes == [1]  # finish_claim: the quiet script found the cancel request and changed nothing
    finally:
        await session.close()
    seen = {name for name, _ in calls}
    assert seen == set(SCRIPT_NAMES)
    for name, count in calls:
        declared = declared_keys(name)
        if (
            declared is None
        ):  # claim, idle: a fixed head plus one key per shape; unlimit: a pair per shape (0+)
            extra = count - len(SPECS[name].keys)
            if SPECS[name].tail == "ready+idle":
                assert extra >= 0 and extra % 2 == 0, name
            else:
                assert extra >= 1, name
        elif name == "submit" and count != declared:  # a plain job: the short form its header names
            assert re.search(rf"is called with KEYS\[1\.\.{count}\] and ARGV", load_sources()[name]), count
        else:
            assert count == declared, name


async def test_script_calls_in_a_row_reuse_the_connection_that_answered(queue: Queue, aredis) -> None:
    # Before: every EVALSHA took a connection from redis-py's pool and gave it back (its lock, checks and hooks
    # cost as much client time as the call). Now the connection that answered stays out as the next call's.
    if queue.scripts.use_functions:
        pytest.skip("FCALL goes through redis-py's own path")
    pool = queue.client.connection_pool
    original, taken = pool.get_connection, []

    async def counting(*args: object, **kwargs: object) -> object:
        taken.append(1)
        return await original(*args, **kwargs)

    pool.get_connection = counting
    try:
        for i in range(20):
            await queue.submit({"service": "echo", "payload": {"n": i}})
    finally:
        pool.get_connection = original
    assert len(taken) <= 1, len(taken)
    assert (await queue.stats()).totals.get("submitted") == 20
    # An error reply leaves it usable; the pool takes the connection back and the next call goes on.
    await aredis.script_flush()
    await queue.submit({"service": "echo"})
    assert (await queue.stats()).totals.get("submitted") == 21

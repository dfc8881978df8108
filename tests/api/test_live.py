"""Live progress over real connections: SSE per job (resumable with Last-Event-ID, across an API restart) and
the WebSocket following many jobs."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from appliance.api.keys import KeyStore, Scope
from appliance.queue import Capabilities, Queue, WorkerSession
from tests.api.conftest import Server, finish, free_port, wait_ready
from tests.api.sse import Event, events


async def read_until_end(resp: aiohttp.ClientResponse, stop_after: int | None = None) -> list[Event]:
    seen: list[Event] = []
    async for event in events(resp):
        seen.append(event)
        if event.event == "end" or (stop_after is not None and len(seen) >= stop_after):
            break
    return seen


async def test_sse_sends_a_jobs_events_then_its_record(server: Server) -> None:
    alice = await server.client("alice")
    other = await server.queue.submit({"service": "echo", "customer_id": "alice"})
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    async with server.http.get(f"{server.base}/v1/jobs/{job['id']}/events", headers=alice.headers()) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        first = await read_until_end(resp, stop_after=1)
        await finish(server.queue, other.id)  # another job's events are not this stream's
        await finish(server.queue, job["id"], result={"v": 1})
        rest = await read_until_end(resp)
    kinds = [e.event for e in first + rest]
    assert kinds == ["submitted", "claimed", "completed", "end"]
    assert {e.data["job"] for e in first + rest[:-1]} == {job["id"]}
    assert rest[-1].data["result"] == {"v": 1} and rest[-1].id is None


async def test_a_finished_job_streams_its_history_at_once(server: Server) -> None:
    alice = await server.client("alice")
    _, job, _ = await alice.call("POST", "/v1/jobs", json={"service": "echo"})
    await finish(server.queue, job["id"], "failed")
    async with server.http.get(f"{server.base}/v1/jobs/{job['id']}/events", headers=alice.headers()) as resp:
        seen = await read_until_end(resp)
    assert [e.event for e in seen] == ["submitted", "claimed", "failed", "end"]
    async with server.http.get(
        f"{server.base}/v1/jobs/{job['id']}/events", headers=alice.headers(**{"Last-Event-ID": seen[1].id})
    ) as resp:
        assert [e.event for e in await read_until_end(resp)] == ["failed", "end"]


async def test_sse_resumed_after_an_api_restart_loses_no_event(redis_url: str, api_process) -> None:  # type: ignore[no-untyped-def]
    queue = await Queue.connect(redis_url)
    _, token = await KeyStore(queue.client, queue.keys).create("alice", [Scope.READ])
    headers = {"Authorization": f"Bearer {token}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    session = await WorkerSession.open(queue, "w1", Capabilities(services=["echo"]))
    try:
        async with aiohttp.ClientSession() as http:
            proc = api_process(port)
            await wait_ready(http, base)
            job = await queue.submit({"service": "echo", "customer_id": "alice"})
            async with http.get(f"{base}/v1/jobs/{job.id}/events", headers=headers) as resp:
                before = await read_until_end(resp, stop_after=1)
                proc.send_signal(signal.SIGTERM)  # the API goes away mid-stream
                assert await asyncio.to_thread(proc.wait, 30) == 0
            claimed = await session.claim()
            assert claimed is not None
            for pct in (10, 50, 90):  # events the client misses while no API runs
                await queue.progress(job.id, claimed.token, pct)
            await queue.complete(job.id, claimed.token, {"ok": 1})
            api_process(port)
            await wait_ready(http, base)
            async with http.get(
                f"{base}/v1/jobs/{job.id}/events", headers={**headers, "Last-Event-ID": before[-1].id}
            ) as resp:
                after = await read_until_end(resp)
    finally:
        await session.close()
        await queue.close()
    kinds = [e.event for e in before + after]
    assert kinds == ["submitted", "claimed", "progress", "progress", "progress", "completed", "end"]
    ids = [e.id for e in before + after if e.id]
    assert len(ids) == len(set(ids)) == 6


async def test_one_websocket_follows_many_jobs(server: Server) -> None:
    alice = await server.client("alice")
    ids = [(await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[1]["id"] for _ in range(3)]
    await finish(server.queue, ids[0])  # already over when followed: history, then end
    async with server.http.ws_connect(server.base + "/v1/ws", headers=alice.headers()) as ws:
        await ws.send_json({"follow": ids})
        got: dict[str, list[str]] = {i: [] for i in ids}
        ended: set[str] = set()

        async def drain(until: set[str]) -> None:
            while not until <= ended:
                message = await asyncio.wait_for(ws.receive_json(), 20)
                if message["type"] == "end":
                    ended.add(message["job"]["id"])
                else:
                    assert message["type"] == "event", message
                    got[message["job"]].append(message["event"])

        await drain({ids[0]})
        await finish(server.queue, ids[1])
        await server.queue.cancel(ids[2])
        await drain(set(ids))
    assert got == {
        ids[0]: ["submitted", "claimed", "completed"],
        ids[1]: ["submitted", "claimed", "completed"],
        ids[2]: ["submitted", "cancelled"],
    }


async def test_events_of_a_batch_entry_stream_once_each_and_resume_in_the_middle_of_it(
    server: Server,
) -> None:
    # A worker's round trip writes its 3 claims as one stream entry and its 3 completions as another (issue 14):
    # each job's stream gets its own event of each, with an id of its own (`<entry>.<i>`), live and from the
    # stream; Last-Event-ID naming any event of an entry resumes right after that event.
    alice = await server.client("alice")
    ids = [(await alice.call("POST", "/v1/jobs", json={"service": "echo"}))[1]["id"] for _ in range(3)]
    shapes = [(await server.queue.get(ids[0])).shape]  # type: ignore[union-attr]
    url = f"{server.base}/v1/jobs/{ids[2]}/events"
    async with server.http.get(url, headers=alice.headers()) as resp:
        live = await read_until_end(resp, stop_after=1)
        _, leased = await server.queue.finish_and_claim([], "w", shapes, 3)
        outcomes = [(c.job.id, c.token, {"n": n}) for n, c in enumerate(leased)]
        assert [c.job.id for c in leased] == ids and (
            await server.queue.finish_and_claim(outcomes, "w", shapes, 3)
        )[0] == [1, 1, 1]
        live += await read_until_end(resp)
    assert [e.event for e in live] == ["submitted", "claimed", "completed", "end"]
    claimed, completed = live[1], live[2]
    assert claimed.id.endswith(".2") and completed.id.endswith(".2")
    assert claimed.data["id"] == claimed.id and claimed.data["fields"]["worker"] == "w"
    assert completed.data["fields"]["result_bytes"] == str(len('{"n":2}'))
    entry = {e.split(".")[0] for e in (claimed.id, completed.id)}
    assert len(entry) == 2  # two entries, one per kind

    async def resumed(last: str) -> list[str]:
        async with server.http.get(url, headers=alice.headers(**{"Last-Event-ID": last})) as resp:
            return [e.id or e.event for e in await read_until_end(resp)]

    claimed_entry = claimed.id.rsplit(".", 1)[0]
    completed_entry = completed.id.rsplit(".", 1)[0]
    assert await resumed(live[0].id) == [claimed.id, completed.id, "end"]
    assert await resumed(f"{claimed_entry}.0") == [claimed.id, completed.id, "end"]  # before it in its entry
    assert await resumed(claimed.id) == [completed.id, "end"]
    assert await resumed(f"{completed_entry}.1") == [completed.id, "end"]
    assert await resumed(completed.id) == ["end"]
    assert await resumed(completed_entry) == ["end"]  # a whole entry: every event of it was seen
    status, problem, _ = await alice.call(
        "GET", f"/v1/jobs/{ids[2]}/events", headers={"Last-Event-ID": "1-0.x"}
    )
    assert status == 400 and "1700000000000-0.3" in problem["detail"]
    # The WebSocket resumes the same way.
    async with server.http.ws_connect(server.base + "/v1/ws", headers=alice.headers()) as ws:
        await ws.send_json({"follow": [ids[1]], "last_event_id": {ids[1]: f"{claimed_entry}.1"}})
        first = await asyncio.wait_for(ws.receive_json(), 20)
        assert (first["event"], first["id"]) == ("completed", f"{completed_entry}.1")
        assert (await asyncio.wait_for(ws.receive_json(), 20))["type"] == "end"

"""A round trip's transitions of one kind share ONE stream entry (`event <kind> jobs <JSON array>`, issue 14), and
every reader of the stream hands on each event once, with its own fields: the parser (entry_events), EventLog's
tail, replay, window and after, and a consumer group (an entry of several events read, handled and acknowledged
as one). Ids and names JSON must escape survive the array."""

from __future__ import annotations

from typing import Any

from appliance.queue import Queue
from appliance.queue.events import WHOLE_ENTRY, EventKind, JobEvent, entry_events, event_key, start_after

#: JSON escapes each of these: a quote, a backslash, a control character, a slash (cjson writes `\/`).
HOSTILE_WORKER = 'w"q\\x\n\t/é'
#: A job id as odd as ID_PATTERN lets one be (job ids cannot hold what JSON escapes; worker ids and services can).
ODD_IDS = ["a.b:c-0", "a.b:c-1", "a.b:c-2"]


async def batch_trip(queue: Queue, service: str = "svc/1") -> tuple[list[str], list[str]]:
    """Three jobs claimed in one round trip, then completed in the next (which claims nothing): the ids of the
    `claimed` entry and the `completed` entry."""
    jobs = await queue.submit_many(
        [{"id": i, "service": service, "payload": {"n": n}} for n, i in enumerate(ODD_IDS)]
    )
    shapes = [jobs[0].shape]
    mark = await queue.client.xrevrange(queue.keys.events, count=1)
    _, leased = await queue.finish_and_claim([], HOSTILE_WORKER, shapes, 3)
    assert [c.job.id for c in leased] == ODD_IDS
    codes, more = await queue.finish_and_claim(
        [(c.job.id, c.token, {"r": c.job.id}) for c in leased], "w", shapes, 3
    )
    assert codes == [1, 1, 1] and more == []
    rows = await queue.client.xrange(queue.keys.events, min=f"({mark[0][0]}")
    return [str(i) for i, _ in rows], [f["event"] for _, f in rows]


def check_batch(events: list[JobEvent], entry_ids: list[str], service: str = "svc/1") -> None:
    """The six events of batch_trip's two entries, in order, each with its own fields and id."""
    assert [(e.kind, e.job) for e in events] == [(EventKind.CLAIMED, i) for i in ODD_IDS] + [
        (EventKind.COMPLETED, i) for i in ODD_IDS
    ]
    assert [e.id for e in events] == [f"{entry}.{n}" for entry in entry_ids for n in range(3)]
    assert all(e.worker == HOSTILE_WORKER and e.service == service for e in events)
    assert all(e.fields["event"] == e.kind.value and e.fields["job"] == e.job for e in events if e.kind)
    assert [e.fields["attempt"] for e in events[:3]] == ["1", "1", "1"]
    assert all(e.number("wait_ms") is not None for e in events[:3])
    assert [e.fields["result_bytes"] for e in events[3:]] == [str(len(f'{{"r":"{i}"}}')) for i in ODD_IDS]
    assert all(e.number("duration_ms") is not None for e in events[3:])
    assert all(
        e.at_ms == int(entry.split("-")[0])
        for e, entry in zip(events, [*entry_ids[:1] * 3, *entry_ids[1:] * 3], strict=True)
    )


async def test_a_round_trip_writes_one_entry_per_kind_and_every_reader_sees_each_event_once(
    queue: Queue, aredis: Any
) -> None:
    await queue.submit({"service": "other"})  # an entry of one event before the batch: as it always was
    await aredis.config_resetstat()
    entry_ids, kinds = await batch_trip(queue)
    assert kinds == ["claimed", "completed"]  # one entry per kind, not one per job
    stats = await aredis.info("commandstats")
    # An entry per submitted job (3), then one per kind (2): before, 3 + 6 XADDs and an XTRIM (main 4726583).
    assert stats["cmdstat_xadd"]["calls"] == 3 + 2 and "cmdstat_xtrim" not in stats, stats
    every = await queue.events.window(0, 100)
    assert [e.kind for e in every[:1]] == [EventKind.SUBMITTED]
    submitted = every[0]
    assert (
        submitted.index is None and submitted.id == submitted.entry_id
    )  # one event: its entry's id, as before
    check_batch([e for e in every if e.kind in (EventKind.CLAIMED, EventKind.COMPLETED)], entry_ids)
    # replay (the last n entries), after (a range, paged by entries) and tail (a cursor of entry ids).
    check_batch(await queue.events.replay(2), entry_ids)
    page, following = await queue.events.after(entry_ids[0], 1)
    assert following == f"({entry_ids[0]}"
    rest, following = await queue.events.after(following, 1)
    check_batch(page + rest, entry_ids)
    assert following == f"({entry_ids[1]}" and await queue.events.after(following, 1) == ([], None)
    # Resuming after an event in the middle of an entry reads that entry again; what follows the event is new.
    again, _ = await queue.events.after(start_after(rest[1].key), 10)
    assert [e.id for e in again if e.key > rest[1].key] == [rest[2].id]
    last_submitted = [e for e in every if e.kind is EventKind.SUBMITTED][-1]
    cursor, tailed = await queue.events.tail(last_submitted.entry_id, count=10)
    assert cursor == entry_ids[-1]
    check_batch(tailed, entry_ids)


async def test_a_consumer_group_reads_a_batch_entry_as_its_events_and_acknowledges_it_once(
    queue: Queue, aredis: Any
) -> None:
    group = queue.events.group("g", "one")
    await group.ensure()
    entry_ids, _ = await batch_trip(queue)
    submitted = await queue.client.xrange(queue.keys.events, max=f"({entry_ids[0]}")
    await queue.client.xgroup_setid(
        queue.keys.events, "g", submitted[-1][0]
    )  # the group reads the batch next
    first = await group.read(count=1, block_ms=None)  # count is in entries: one entry, three events
    assert [e.entry_id for e in first] == [entry_ids[0]] * 3
    # A member that dies before acknowledging: another takes the whole entry over, every event of it.
    taken = await queue.events.group("g", "two").take_over(idle_ms=0, count=10)
    check_batch(taken + await group.read(count=10, block_ms=None), entry_ids)
    await aredis.config_resetstat()
    await group.ack(taken)
    assert (await aredis.info("commandstats"))["cmdstat_xack"]["calls"] == 1
    assert (await queue.client.xpending(queue.keys.events, "g"))["pending"] == 1  # the completed entry
    await group.ack(await queue.events.window(0, 100))
    assert (await queue.client.xpending(queue.keys.events, "g"))["pending"] == 0


async def test_the_quiet_and_the_full_round_trip_write_the_same_batch_entries(
    queue: Queue, redis_url: str
) -> None:
    quiet, full = queue, await Queue.connect(redis_url, queue_name="full")
    await full.client.hset(
        full.keys.cancels, "no-such-job", "1"
    )  # a feature key: complete.lua and claim.lua run
    seen = []
    for q in (quiet, full):
        entry_ids, _ = await batch_trip(q)
        events = [e for e in await q.events.window(0, 100) if e.kind is not EventKind.SUBMITTED]
        check_batch(events, entry_ids)
        seen.append(
            [{k: v for k, v in e.fields.items() if k not in ("wait_ms", "duration_ms")} for e in events]
        )
    await full.close()
    assert seen[0] == seen[1]


def test_the_parser_reads_entries_of_one_event_of_several_and_odd_ones() -> None:
    one = {"event": "completed", "job": "a", "worker": "w"}
    assert entry_events("5-1", one) == [JobEvent("5-1", EventKind.COMPLETED, "a", one)]
    several = {"event": "claimed", "jobs": '[{"job":"a","worker":"w\\"\\n"},{"job":"b","attempt":"2"}]'}
    a, b = entry_events("5-2", several)
    assert (a.id, a.job, dict(a.fields)) == ("5-2.0", "a", {"event": "claimed", "job": "a", "worker": 'w"\n'})
    assert (b.id, b.job, b.number("attempt"), b.at_ms) == ("5-2.1", "b", 2, 5)
    # A member cannot pass for another kind; numbers are read as text; never no event for an entry (a reader's
    # cursor and a group's acknowledgement cover it): an array that does not decode is one event with no job.
    (c,) = entry_events("5-3", {"event": "claimed", "jobs": '[{"job":"c","event":"completed","n":3}]'})
    assert (c.kind, c.fields["event"], c.fields["n"]) == (EventKind.CLAIMED, "claimed", "3")
    for odd in ("not json", "[]", '{"job":"x"}', "[1, 2]"):
        (event,) = entry_events("5-4", {"event": "claimed", "jobs": odd})
        assert (event.job, event.kind, event.id) == ("", EventKind.CLAIMED, "5-4")


def test_event_ids_order_events_within_and_across_entries() -> None:
    assert event_key("5-2") == (5, 2, WHOLE_ENTRY)
    assert event_key("5-2.0") < event_key("5-2.1") < event_key("5-2") < event_key("5-3.0") < event_key("6-0")
    assert start_after(event_key("5-2")) == "(5-2"  # after a whole entry: the next one
    assert start_after(event_key("5-2.1")) == "5-2"  # in the middle of one: that entry again (the rest of it)

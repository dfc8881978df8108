"""The queue's lifecycle events: what each one means, and reading them from the capped stream.

The scripts write the transitions to the capped stream (includes/emit.lua): an event's entry has `event` (an
EventKind), `job`, and per kind `worker`, `service`, `shape`, `attempt`, `wait_ms`, `duration_ms`, `reason`,
`retry_in_ms`; a `submitted` job that waits for its parents (`after`) carries `parents` and `blocked` = 1 (status
blocked until its `unblocked`). When a script makes several transitions of one kind at once (a worker's round
trip: its completions, its claims), they share ONE entry, `event <kind> jobs <JSON array>`, each element one
event's other members as strings (one XADD instead of one per job: issue 14). The entry id `<ms>-<seq>` is the
server's time of the transition; an event's own id (`JobEvent.id`) is its entry's id, plus `.<i>` (its place in
the array, from 0) in an entry of several. `entry_events` is the one parser: every reader (EventLog, EventGroup)
hands on events, never entries. Pub/sub copies carry the same names as JSON, with `event` and `queue`: a message
is one event's object or, for several, one object with `event`, `queue` and the same `jobs` array.
`pubsub_events` is the one decoder every subscriber uses.

MEANING is the one event -> meaning map: the monitor (a job's status, the throughput series), the pool signals
(outcomes per pool) and the machine's job metrics all read it, so a new event is taught to them in one place.
`status_after` (`JobEvent.status`) is the job's status after one entry: MEANING's, with the `blocked` flag read,
so no reader outside the queue interprets a field of its own.

`EventLog.group(name, consumer)` is a consumer group on the stream (each entry handled by one member, acknowledged
after): readers outside the queue, like the webhook feed, use it instead of XREADGROUP on a key they would have
to know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.exceptions import ResponseError

from appliance.queue.conn import QueueConnection
from appliance.queue.models import JobStatus
from appliance.queue.records import entry_ms, json_or, number


class EventKind(StrEnum):
    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    PROGRESS = "progress"
    COMPLETED = "completed"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    #: A leased job's cancellation was requested; its worker is told and ends it (then: cancelled).
    CANCEL_REQUESTED = "cancel_requested"
    RELEASED = "released"
    LEASE_EXPIRED = "lease_expired"
    #: A failed or dead job was put back in line by hand (Queue.retry: dead-letter replay).
    REPLAYED = "replayed"
    #: A job waiting for its parents was released by the last of them (it goes into line).
    UNBLOCKED = "unblocked"

    @classmethod
    def parse(cls, name: Any) -> EventKind | None:
        """The kind of an event name, or None for a name this version does not know (a newer writer's)."""
        try:
            return cls(name)
        except ValueError:
            return None


class AttemptEnd(StrEnum):
    """How an event ends the attempt that was running (None in MEANING: it ends none, or only by cancel)."""

    COMPLETED = "completed"
    #: Failed, and the job goes again (retrying).
    RETRIED = "retried"
    #: Failed for good (failed, dead).
    FAILED = "failed"
    #: Handed back unfinished, not a failure of the job (released, lease_expired).
    RETURNED = "returned"


@dataclass(frozen=True)
class Meaning:
    #: The job's status after the event; None when the event does not change it.
    status: JobStatus | None
    ends: AttemptEnd | None = None

    @property
    def back_in_line(self) -> bool:
        """The job waits again for another attempt (retrying, released, lease_expired)."""
        return self.ends is not None and self.status is JobStatus.PENDING


MEANING: dict[EventKind, Meaning] = {
    EventKind.SUBMITTED: Meaning(JobStatus.PENDING),
    EventKind.CLAIMED: Meaning(JobStatus.CLAIMED),
    EventKind.PROGRESS: Meaning(JobStatus.RUNNING),
    EventKind.COMPLETED: Meaning(JobStatus.COMPLETED, AttemptEnd.COMPLETED),
    EventKind.RETRYING: Meaning(JobStatus.PENDING, AttemptEnd.RETRIED),
    EventKind.FAILED: Meaning(JobStatus.FAILED, AttemptEnd.FAILED),
    EventKind.DEAD: Meaning(JobStatus.DEAD, AttemptEnd.FAILED),
    EventKind.CANCELLED: Meaning(JobStatus.CANCELLED),
    EventKind.CANCEL_REQUESTED: Meaning(None),
    EventKind.RELEASED: Meaning(JobStatus.PENDING, AttemptEnd.RETURNED),
    EventKind.LEASE_EXPIRED: Meaning(JobStatus.PENDING, AttemptEnd.RETURNED),
    EventKind.REPLAYED: Meaning(JobStatus.PENDING),
    EventKind.UNBLOCKED: Meaning(JobStatus.PENDING),
}


def meaning(name: Any) -> Meaning | None:
    """What an event name means, or None for one this version does not know."""
    kind = EventKind.parse(name)
    return MEANING[kind] if kind is not None else None


def status_after(name: Any, fields: Mapping[str, Any]) -> JobStatus | None:
    """The job's status after an event with these fields (stream entry or pub/sub message); None when the event
    is unknown or changes no status. A `submitted` job that waits for its parents is blocked, not pending."""
    kind = EventKind.parse(name)
    if kind is None:
        return None
    if kind is EventKind.SUBMITTED and str(fields.get("blocked") or "") == "1":
        return JobStatus.BLOCKED
    return MEANING[kind].status


def pubsub_events(data: Any) -> list[dict[str, Any]]:
    """The lifecycle events one pub/sub message carries, in order: an event's JSON object, or one object for
    several events of one kind, `{"event", "queue", "jobs": [each event's other members]}` (includes/emit.lua
    `emit_many`); nothing for a message that is neither."""
    value = json_or(data, None)
    if not isinstance(value, dict):
        return []
    jobs = value.get("jobs")
    if not isinstance(jobs, list):
        return [value]
    common = {k: v for k, v in value.items() if k != "jobs"}
    return [{**common, **job} for job in jobs if isinstance(job, dict)]


#: The place in an event key that stands for a whole entry (`<ms>-<seq>`, no `.<i>`): after every event in it.
WHOLE_ENTRY = 1 << 62


def event_key(event_id: str) -> tuple[int, int, int]:
    """The order of an event id: (ms, seq, place), place WHOLE_ENTRY for `<ms>-<seq>` (an entry of one event, or a
    whole entry) and i for `<ms>-<seq>.<i>`. The caller checked the form (an API's Last-Event-ID)."""
    entry, _, place = str(event_id).partition(".")
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0), int(place) if place else WHOLE_ENTRY


def start_after(key: tuple[int, int, int]) -> str:
    """The XRANGE start for the events after the one of `key`: `(<ms>-<seq>` (exclusive) after a whole entry;
    the entry itself (inclusive) after an event in the middle of one, whose events up to `key` the reader skips."""
    ms, seq, place = key
    return f"({ms}-{seq}" if place == WHOLE_ENTRY else f"{ms}-{seq}"


@dataclass(frozen=True)
class JobEvent:
    """One event of a stream entry (`index`: its place in an entry of several events, None in an entry of one)."""

    entry_id: str
    kind: EventKind | None
    job: str
    fields: Mapping[str, str] = field(default_factory=dict)
    index: int | None = None

    @classmethod
    def of_entry(cls, entry_id: str, fields: Mapping[str, str]) -> JobEvent:
        """The event of an entry of one event (`entry_events` reads any entry)."""
        return cls(str(entry_id), EventKind.parse(fields.get("event")), str(fields.get("job") or ""), fields)

    @property
    def id(self) -> str:
        """This event's own id: its entry's, with `.<index>` in an entry of several (unique, ordered: event_key)."""
        return self.entry_id if self.index is None else f"{self.entry_id}.{self.index}"

    @property
    def key(self) -> tuple[int, int, int]:
        return event_key(self.id)

    @property
    def at_ms(self) -> int:
        return entry_ms(self.entry_id)

    @property
    def meaning(self) -> Meaning | None:
        return MEANING[self.kind] if self.kind is not None else None

    @property
    def status(self) -> JobStatus | None:
        """The job's status after this event (status_after)."""
        return status_after(self.kind, self.fields)

    @property
    def worker(self) -> str | None:
        return self.fields.get("worker")

    @property
    def service(self) -> str:
        return self.fields.get("service") or ""

    def number(self, name: str) -> float | None:
        """A numeric field (`attempt`, `wait_ms`, `duration_ms`, `retry_in_ms`), None when absent or odd."""
        return number(self.fields.get(name))


def entry_events(entry_id: Any, fields: Mapping[str, str]) -> list[JobEvent]:
    """The events one stream entry carries, in order: an entry of one event, or `event <kind> jobs <JSON array>`
    for several (each element one event's other members; includes/emit.lua `emit_many`). Never empty, so a
    reader's cursor and a group's acknowledgement cover every entry: one whose `jobs` does not decode is one event
    with no job, which readers pass over."""
    entry_id = str(entry_id)
    raw = fields.get("jobs")
    if raw is None or "job" in fields:
        return [JobEvent.of_entry(entry_id, fields)]
    common = {k: v for k, v in fields.items() if k != "jobs"}
    kind = EventKind.parse(common.get("event"))
    jobs = json_or(raw, None)
    events = []
    for i, member in enumerate(jobs if isinstance(jobs, list) else ()):
        if isinstance(member, dict):
            own = {
                str(k): v if isinstance(v, str) else json.dumps(v)
                for k, v in member.items()
                if k not in common
            }
            events.append(JobEvent(entry_id, kind, str(own.get("job") or ""), {**common, **own}, i))
    return events or [JobEvent(entry_id, kind, "", common)]


def _events_of(rows: Any) -> list[JobEvent]:
    """The events of XRANGE/XREAD rows `[(entry id, fields), ...]`, in order; deleted entries (no fields) left out."""
    return [event for i, f in rows or () if i and f is not None for event in entry_events(i, f)]


class EventLog:
    """Reads the queue's event stream (`appliance:{<queue>}:events`)."""

    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    async def tail(
        self, since: str = "$", *, block_ms: int | None = None, count: int = 500
    ) -> tuple[str, list[JobEvent]]:
        """Entries after `since` ('$': from now on), waiting up to `block_ms` for one (None: do not wait).
        Returns the id to pass next time and the events, oldest first."""
        if since == "$":
            # XREAD of '$' again on the next call would skip what arrived between the two: start from an id.
            since = await self._newest_id()
        reply = await self.conn.client.xread({self.conn.keys.events: since}, count=count, block=block_ms)
        rows = [row for _stream, entries in reply or [] for row in entries]
        return (str(rows[-1][0]) if rows else since), _events_of(rows)

    async def _newest_id(self) -> str:
        last = await self.conn.client.xrevrange(self.conn.keys.events, count=1)
        return str(last[0][0]) if last else "0-0"

    async def replay(self, n: int) -> list[JobEvent]:
        """The events of the last `n` entries, oldest first."""
        entries = await self.conn.client.xrevrange(self.conn.keys.events, count=n)
        return _events_of(reversed(entries))

    def group(self, name: str, consumer: str) -> EventGroup:
        """Member `consumer` of consumer group `name` on this stream."""
        return EventGroup(self.conn, name, consumer)

    async def after(self, start: str, count: int) -> tuple[list[JobEvent], str | None]:
        """The events of at most `count` entries from the XRANGE bound `start` on (`<ms>-<seq>`, or `(<id>` to
        exclude that entry; `start_after`), oldest first, and the bound of the next page (None: the stream
        ended): how a reader resumes from the last event it handed on (the API's SSE)."""
        entries = await self.conn.client.xrange(self.conn.keys.events, min=start, max="+", count=count)
        following = f"({entries[-1][0]}" if len(entries) >= count else None
        return _events_of(entries), following

    async def window(self, start_ms: int, count: int) -> list[JobEvent]:
        """The events of at most `count` entries from `start_ms` (server time) on, oldest first."""
        entries = await self.conn.client.xrange(
            self.conn.keys.events, min=f"{max(0, start_ms)}-0", max="+", count=count
        )
        return _events_of(entries)


class EventGroup:
    """One member (`consumer`) of consumer group `name` on the queue's event stream."""

    def __init__(self, conn: QueueConnection, name: str, consumer: str) -> None:
        self.conn = conn
        self.name = name
        self.consumer = consumer

    @property
    def _stream(self) -> str:
        return self.conn.keys.events

    async def ensure(self) -> None:
        """Create the group at the stream's end (MKSTREAM: also before the first event); present is fine."""
        try:
            await self.conn.client.xgroup_create(self._stream, self.name, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, *, count: int, block_ms: int | None) -> list[JobEvent]:
        """The events of at most `count` entries no member has read yet, waiting up to `block_ms` for one."""
        reply = await self.conn.client.xreadgroup(
            self.name, self.consumer, {self._stream: ">"}, count=count, block=block_ms
        )
        return _events_of([row for _s, rows in reply or [] for row in rows])

    async def ack(self, events: list[JobEvent]) -> None:
        """Acknowledge the entries of `events`, each once: call it after every event of those entries was
        handled (an entry of several events is one acknowledgement)."""
        entry_ids = list(dict.fromkeys(e.entry_id for e in events))
        if entry_ids:
            await self.conn.client.xack(self._stream, self.name, *entry_ids)

    async def take_over(self, *, idle_ms: int, count: int) -> list[JobEvent]:
        """Entries another member read but never acknowledged (its process died), idle for `idle_ms`."""
        reply = await self.conn.client.xautoclaim(
            self._stream, self.name, self.consumer, idle_ms, start_id="0-0", count=count
        )
        rows: list[Any] = reply[1] if len(reply) > 1 else []
        return _events_of(rows)

    async def drop_stale_members(self, idle_ms: int) -> int:
        """Remove other members idle for `idle_ms` with nothing pending (processes that are gone)."""
        dropped = 0
        for member in await self.conn.client.xinfo_consumers(self._stream, self.name):
            name = str(member.get("name"))
            if (
                name != self.consumer
                and int(member.get("pending", 0)) == 0
                and int(member.get("idle", 0)) > idle_ms
            ):
                await self.conn.client.xgroup_delconsumer(self._stream, self.name, name)
                dropped += 1
        return dropped

    async def trimmed_past(self) -> tuple[str, str] | None:
        """(last id the group read, oldest id left) when the stream was trimmed past what the group had read:
        entries of that time were lost to the group. None when nothing was lost (or the group is new)."""
        groups = await self.conn.client.xinfo_groups(self._stream)
        mine = next((g for g in groups if str(g.get("name")) == self.name), None)
        first = await self.conn.client.xrange(self._stream, count=1)
        if mine is None or not first:
            return None
        read = str(mine.get("last-delivered-id") or "0-0")
        if read != "0-0" and entry_ms(read) < entry_ms(str(first[0][0])):
            return read, str(first[0][0])
        return None

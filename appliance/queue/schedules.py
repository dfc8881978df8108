"""Repeating jobs: a job template submitted on a cron expression or a fixed interval.

    await queue.schedules.add(ScheduleSpec(id="nightly", cron="0 3 * * *", job={"service": "echo"}))
    await queue.schedules.materialise()      # the housekeeper's step; every worker's reaper calls it

The schedule's next tick sits in a due index by the server's clock. A housekeeper that finds a tick due submits
its job under the id `<schedule>:<tick ms>` and then moves the schedule on with a compare-and-set. Several
housekeepers may find the same tick: they submit the same id, Redis keeps one job, and only the first moves the
schedule. A housekeeper that dies between the two steps leaves the tick due, and the next one submits the same
id again (a duplicate, refused) and moves on: no tick runs twice, none is lost. Ticks missed while no housekeeper
ran (a fleet down, Redis down) are caught up if they are younger than the schedule's `catch_up_s`, else skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from appliance.queue.conn import QueueConnection
from appliance.queue.cron import Cron, CronError
from appliance.queue.errors import DuplicateJob, QueueError, ScriptCode
from appliance.queue.models import JobSpec
from appliance.queue.producer import Producer, field_problems

log = logging.getLogger(__name__)

#: Schedule ids: like job ids, short enough that `<schedule>:<tick ms>` is a valid job id.
SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Schedules one housekeeper pass looks at, and ticks it submits per schedule (the rest wait for the next pass).
DUE_PER_PASS = 100
TICKS_PER_PASS = 100


class ScheduleNotFound(QueueError, KeyError):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(schedule_id)
        self.schedule_id = schedule_id

    def __str__(self) -> str:
        return f"schedule {self.schedule_id!r} not found"


class DuplicateSchedule(QueueError):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"a schedule with id {schedule_id!r} exists already (use replace to change it)")
        self.schedule_id = schedule_id


class InvalidSchedule(QueueError, ValueError):
    """A schedule failed validation; the message names the field."""


class ScheduleSpec(BaseModel):
    """A repeating job as a client defines it: exactly one of `cron` and `every_s`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=SCHEDULE_ID_PATTERN, description="The schedule's name; its jobs are `<id>:<tick ms>`."
    )
    job: JobSpec = Field(description="The job submitted at every tick (without an id).")
    cron: str | None = Field(None, description="Five-field cron expression, UTC (appliance.queue.cron).")
    every_s: float | None = Field(None, ge=1, le=366 * 86400, description="Fixed interval, seconds.")
    start_at_ms: int | None = Field(
        None,
        ge=0,
        description="Interval schedules: the first tick (epoch ms); default: one interval after creation.",
    )
    catch_up_s: float = Field(
        3600,
        ge=0,
        le=30 * 86400,
        description="Missed ticks younger than this run late; older ones are skipped.",
    )

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Cron.parse(value)
            except CronError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give exactly one of cron and every_s")
        if self.job.id is not None:
            raise ValueError("job.id: a scheduled job gets its id from the schedule and the tick")
        return self


class Schedule(ScheduleSpec):
    """A stored schedule and where it stands."""

    created_ms: int
    paused: bool = False
    #: The next tick (epoch ms); None while paused.
    next_ms: int | None = None

    def tick_after(self, after_ms: int) -> int | None:
        """The first tick strictly after `after_ms`, or None if there is none."""
        if self.cron is not None:
            return Cron.parse(self.cron).next_after(after_ms)
        step = int(round((self.every_s or 0) * 1000))
        anchor = self.start_at_ms if self.start_at_ms is not None else self.created_ms + step
        if after_ms < anchor:
            return anchor
        return anchor + ((after_ms - anchor) // step + 1) * step

    def job_id(self, tick_ms: int) -> str:
        return f"{self.id}:{tick_ms}"


@dataclass(frozen=True)
class MaterialiseResult:
    submitted: int = 0
    #: Ticks that were due but had been submitted already (by another housekeeper).
    duplicates: int = 0
    #: Schedules that skipped ticks older than their catch-up window (counted once per schedule and pass).
    skipped: int = 0
    #: ms until the earliest tick not yet due, by the server's clock; None when no schedule is active.
    next_in_ms: int | None = None


def parse_schedule(data: Mapping[str, Any] | ScheduleSpec) -> ScheduleSpec:
    if isinstance(data, ScheduleSpec):
        return data
    try:
        return ScheduleSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSchedule(f"invalid schedule: {field_problems(exc, 'schedule')}") from None


class Schedules:
    """Create, list, pause, resume and remove repeating jobs, and materialise their due ticks."""

    def __init__(self, conn: QueueConnection, producer: Producer) -> None:
        self.conn = conn
        self.producer = producer

    # --- writes -----------------------------------------------------------------------------------------------

    async def add(self, spec: ScheduleSpec | Mapping[str, Any], *, replace: bool = False) -> Schedule:
        """Create a schedule (or replace one of the same id); its first tick is the first after now."""
        parsed = parse_schedule(spec)
        now = await self.conn.server_time_ms()
        schedule = Schedule(**parsed.model_dump(), created_ms=now)
        schedule.next_ms = schedule.tick_after(now)
        await self._save(schedule, "replace" if replace else "create")
        return schedule

    async def pause(self, schedule_id: str) -> Schedule:
        """Stop materialising a schedule; ticks passed while paused are not caught up on resume."""
        schedule = await self.get(schedule_id)
        schedule.paused, schedule.next_ms = True, None
        await self._save(schedule, "update")
        return schedule

    async def resume(self, schedule_id: str) -> Schedule:
        schedule = await self.get(schedule_id)
        schedule.paused = False
        schedule.next_ms = schedule.tick_after(await self.conn.server_time_ms())
        await self._save(schedule, "update")
        return schedule

    async def remove(self, schedule_id: str) -> None:
        """Delete a schedule; jobs it submitted already stay in the queue."""
        call = self.conn.prepare("schedule_save", [schedule_id, "remove"])
        if int(await self.conn.run(call)) == ScriptCode.NOT_FOUND:
            raise ScheduleNotFound(schedule_id)

    async def _save(self, schedule: Schedule, mode: str) -> None:
        record = schedule.model_dump_json(exclude={"next_ms"})
        next_ms = "" if schedule.paused or schedule.next_ms is None else schedule.next_ms
        code = int(
            await self.conn.run(self.conn.prepare("schedule_save", [schedule.id, mode, record, next_ms]))
        )
        if code == ScriptCode.DUPLICATE:
            raise DuplicateSchedule(schedule.id)
        if code == ScriptCode.NOT_FOUND:
            raise ScheduleNotFound(schedule.id)

    # --- reads ------------------------------------------------------------------------------------------------

    async def get(self, schedule_id: str) -> Schedule:
        k = self.conn.keys
        raw = await self.conn.client.hget(k.schedules, schedule_id)
        if raw is None:
            raise ScheduleNotFound(schedule_id)
        next_ms = await self.conn.client.zscore(k.schedule_due, schedule_id)
        return _decode(raw, next_ms)

    async def list(self) -> list[Schedule]:
        """Every schedule, by id (a fleet has tens or hundreds of them, not millions)."""
        k = self.conn.keys
        records = await self.conn.client.hgetall(k.schedules)
        ids = sorted(str(i) for i in records)
        nexts = await self.conn.client.zmscore(k.schedule_due, ids) if ids else []
        by_id = {str(i): raw for i, raw in records.items()}
        return [_decode(by_id[i], n) for i, n in zip(ids, nexts, strict=True)]

    # --- the housekeeper's step -------------------------------------------------------------------------------

    async def materialise(self, now_ms: int | None = None) -> MaterialiseResult:
        """Submit the job of every due tick (each once across the fleet) and move the schedules on.
        `now_ms` replaces the server's clock (tests)."""
        call = self.conn.prepare("schedule_due", [DUE_PER_PASS, "" if now_ms is None else now_ms])
        now, wait, *pairs = await self.conn.run(call)
        now, wait = int(now), int(wait)
        submitted = duplicates = skipped = 0
        ids = [str(pairs[i]) for i in range(0, len(pairs), 2)]
        records = await self.conn.client.hmget(self.conn.keys.schedules, ids) if ids else []
        for index, raw in enumerate(records):
            if raw is None:
                continue  # removed meanwhile
            read_tick = int(float(pairs[2 * index + 1]))
            schedule = _decode(raw, read_tick)
            s, d, k, following = await self._run_due(schedule, read_tick, now)
            submitted, duplicates, skipped = submitted + s, duplicates + d, skipped + k
            args = [schedule.id, read_tick, "" if following is None else following]
            await self.conn.run(self.conn.prepare("schedule_advance", args))
            if following is not None and following > now:
                wait = following - now if wait < 0 else min(wait, following - now)
            elif following is not None:
                wait = 0  # more ticks due than one pass submits: come back at once
        return MaterialiseResult(submitted, duplicates, skipped, None if wait < 0 else wait)

    async def _run_due(self, schedule: Schedule, tick: int, now: int) -> tuple[int, int, int, int | None]:
        """Submit the due ticks from `tick` on: (submitted, duplicates, skipped, the first tick not submitted)."""
        submitted = duplicates = skipped = 0
        oldest = now - int(schedule.catch_up_s * 1000)
        if tick < oldest:  # far behind: jump to the window instead of walking every missed tick
            first = schedule.tick_after(oldest - 1)
            skipped = 1
            if first is None:
                return 0, 0, skipped, None
            tick = first
        next_tick: int | None = tick
        for _ in range(TICKS_PER_PASS):
            if next_tick is None or next_tick > now:
                break
            job = schedule.job.model_copy(update={"id": schedule.job_id(next_tick)})
            try:
                await self.producer.submit(job)
                submitted += 1
            except DuplicateJob:
                duplicates += 1
            next_tick = schedule.tick_after(next_tick)
        if skipped:
            log.warning("schedule %s: ticks older than its catch-up window were skipped", schedule.id)
        return submitted, duplicates, skipped, next_tick


def _decode(raw: Any, next_ms: Any) -> Schedule:
    data = json.loads(raw)
    data["next_ms"] = None if next_ms is None else int(float(next_ms))
    return Schedule.model_validate(data)

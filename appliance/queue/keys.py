"""Every Redis key and channel the queue uses, in one place.

All keys of a queue share the hash tag `{<queue>}` so each script's keys live in one Cluster slot. Job data is
kept in per-queue hashes keyed by job id (columns), so a script never has to build a key from a job id it
learned mid-script: every key it touches arrives in KEYS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Pub/sub channels named like the original system's, shared by all queues (messages carry `queue`).
CHANNEL_SUBMITTED = "job_submitted"
CHANNEL_CLAIMED = "job_claimed"
CHANNEL_PROGRESS = "update_job_progress"
CHANNEL_COMPLETED = "complete_job"
CHANNEL_FAILED = "job_failed"


@dataclass(frozen=True)
class QueueKeys:
    """Key names of one queue. `{name}` is the Cluster hash tag."""

    name: str

    def __post_init__(self) -> None:
        if not QUEUE_NAME_RE.match(self.name):
            raise ValueError(f"queue name {self.name!r} is invalid (letters, digits, _ . -; max 64)")

    @property
    def prefix(self) -> str:
        return f"appliance:{{{self.name}}}:"

    def key(self, suffix: str) -> str:
        return self.prefix + suffix

    # Job columns: hash field = job id.
    @property
    def spec(self) -> str:
        """Immutable submitted job (JSON), returned verbatim to the claiming worker."""
        return self.key("spec")

    @property
    def meta(self) -> str:
        """`shape|service|created_ms|priority|max_retries|timeout_ms|score`: what scripts need, without JSON."""
        return self.key("meta")

    @property
    def state(self) -> str:
        return self.key("state")

    @property
    def attempts(self) -> str:
        return self.key("attempts")

    @property
    def owner(self) -> str:
        """While leased: `token|worker|claimed_ms`."""
        return self.key("owner")

    @property
    def progress(self) -> str:
        return self.key("progress")

    @property
    def results(self) -> str:
        return self.key("results")

    @property
    def errors(self) -> str:
        """JSON list of every failed attempt: the error history."""
        return self.key("errors")

    @property
    def info(self) -> str:
        """After finishing: `worker|claimed_ms|finished_ms`."""
        return self.key("info")

    @property
    def cancels(self) -> str:
        """Jobs whose cancellation was requested while they ran."""
        return self.key("cancels")

    @property
    def customer(self) -> str:
        """The customer of a job that names one (claim.lua checks pauses against it)."""
        return self.key("customer")

    # Indexes.
    def ready(self, shape: str) -> str:
        """Ready index of one shape: ZSET job id -> score (priority as a time offset, then FIFO)."""
        return self.key(f"ready:{shape}")

    def idle(self, shape: str) -> str:
        """ZSET worker id -> ms it began waiting, of the idle workers that serve one shape (oldest first is woken
        first). Entries of a worker that was woken through another of its shapes stay until popped (stale)."""
        return self.key(f"idle:{shape}")

    @property
    def waiting(self) -> str:
        """HASH worker id -> hub channel of its process, for each worker registered as idle; a wake-up consumes
        the entry, so a registration wakes its worker at most once."""
        return self.key("waiting")

    def worker_class(self, class_id: str) -> str:
        """SET of the shape ids one worker class serves (claim.lua walks `heads` against it)."""
        return self.key(f"class:{class_id}")

    def tenant_jobs(self, customer: str) -> str:
        """ZSET of one customer's job ids -> submit order (ms * 1000 + sequence), for the HTTP API's listing.
        Ids whose record expired linger until a listing passes them (Reader.tenant_page removes them)."""
        return self.key(f"tenant:{customer}")

    @property
    def heads(self) -> str:
        """ZSET shape -> score of its best waiting job; only non-empty shapes are members."""
        return self.key("heads")

    @property
    def shapes(self) -> str:
        """HASH shape -> canonical requirement record (JSON)."""
        return self.key("shapes")

    @property
    def shape_live(self) -> str:
        """HASH shape -> last ms a live worker able to serve it heartbeated."""
        return self.key("shape_live")

    @property
    def leases(self) -> str:
        """ZSET job id -> lease deadline (ms)."""
        return self.key("leases")

    @property
    def delayed(self) -> str:
        """ZSET job id -> time its retry is due (ms)."""
        return self.key("delayed")

    @property
    def done(self) -> str:
        """ZSET finished job id -> time its record expires (ms)."""
        return self.key("done")

    @property
    def dead(self) -> str:
        """ZSET dead-lettered job id -> time it died (ms)."""
        return self.key("dead")

    @property
    def counts(self) -> str:
        """HASH of monotonic totals kept by the scripts (submitted, completed, failed, ...)."""
        return self.key("counts")

    @property
    def events(self) -> str:
        """Capped lifecycle event stream."""
        return self.key("events")

    @property
    def schedules(self) -> str:
        """HASH schedule id -> repeating schedule (JSON): the job to submit and when (appliance.queue.schedules)."""
        return self.key("schedules")

    @property
    def schedule_due(self) -> str:
        """ZSET schedule id -> its next tick (ms); a paused schedule is absent."""
        return self.key("schedule_due")

    @property
    def fair_finish(self) -> str:
        """HASH customer -> `tag|arrival` (score units) of its latest job: fair share's per-customer clock."""
        return self.key("fair_finish")

    @property
    def fair_weights(self) -> str:
        """HASH customer -> fair-share weight (absent: 1)."""
        return self.key("fair_weights")

    @property
    def paused(self) -> str:
        """HASH `queue` | `shape:<id>` | `customer:<id>` -> ms it was paused: what claims skip."""
        return self.key("paused")

    @property
    def held(self) -> str:
        """ZSET (score 0) `<customer>|<shape>|<id>`: waiting jobs a customer's pause took out of line."""
        return self.key("held")

    @property
    def children(self) -> str:
        """ZSET (score 0) `parent|child`: one edge per child still waiting for that unfinished parent (a lex
        range lists one parent's children: O(children) when it finishes, never a scan)."""
        return self.key("children")

    @property
    def blocked(self) -> str:
        """ZSET child id -> how many of its parents have not finished yet: the jobs waiting for parents."""
        return self.key("blocked")

    @property
    def parents(self) -> str:
        """HASH id -> `policy|start_ms|parent1,parent2,...` of a job submitted with `after` (a job column)."""
        return self.key("parents")

    @property
    def limits(self) -> str:
        """HASH of per-customer limits (appliance.queue.limits): `<c>|cap` -> jobs in flight fleet-wide,
        `<c>|pool|<p>` -> jobs in flight on pool p's workers, `<c>|pools` -> the pools capped (comma-separated),
        `<c>|rate` -> `starts per s|burst`. Empty: claims skip every limit check."""
        return self.key("limits")

    @property
    def inflight(self) -> str:
        """HASH `<c>` -> leased jobs of a limited customer, `<c>|<pool>` -> those on pool p's workers."""
        return self.key("inflight")

    @property
    def charged(self) -> str:
        """HASH job id -> `<customer>|<pool>` its lease counts in `inflight`; removed when the lease ends."""
        return self.key("charged")

    @property
    def buckets(self) -> str:
        """HASH customer -> `tokens|ms` of its start-rate token bucket (server clock)."""
        return self.key("buckets")

    @property
    def limited(self) -> str:
        """ZSET (score 0) `<customer>|<score, 17 digits>|<shape>|<id>`: waiting jobs a limit took out of line,
        each customer's in line order (ZRANGEBYLEX)."""
        return self.key("limited")

    @property
    def limits_due(self) -> str:
        """ZSET customer -> ms from which its held jobs may go back in line (a lease ended, a token accrues)."""
        return self.key("limits_due")

    @property
    def reaper_lock(self) -> str:
        return self.key("reaper")

    @property
    def workers(self) -> str:
        """HASH worker id -> registration (capabilities, machine, shapes) as JSON."""
        return self.key("workers")

    @property
    def workers_seen(self) -> str:
        """ZSET worker id -> last heartbeat (ms)."""
        return self.key("workers_seen")

    @property
    def worker_status(self) -> str:
        """HASH worker id -> live status JSON (state, current jobs, progress) for machine status and the monitor."""
        return self.key("worker_status")

    # Channels.
    def hub_channel(self, hub_id: str) -> str:
        """The channel of one process's wake hub: wake-ups (`worker|shape`) of the idle workers it holds."""
        return self.key(f"hub:{hub_id}")

    @property
    def shapes_channel(self) -> str:
        return self.key("new_shape")

    @property
    def cancel_channel(self) -> str:
        return self.key("cancel")

    def job_columns(self) -> list[str]:
        """Every per-job hash, in the order the cleanup scripts take them."""
        return [
            self.spec,
            self.meta,
            self.state,
            self.attempts,
            self.owner,
            self.progress,
            self.results,
            self.errors,
            self.info,
            self.cancels,
            self.customer,
            self.parents,
        ]

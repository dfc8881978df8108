"""The webhook service of one API process: registering a job's webhook, the delivery worker, the dead list and
the tenants' signing secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError, ResponseError

from appliance.config.queue import EventsMode
from appliance.config.webhooks import WebhookSettings
from appliance.queue.models import ID_PATTERN
from appliance.webhooks.bodies import TERMINAL_OF, delivery_of
from appliance.webhooks.errors import InvalidTenant, WebhooksUnavailable
from appliance.webhooks.feed import Feed, ensure_group
from appliance.webhooks.keys import WebhookKeys
from appliance.webhooks.metrics import WebhookMetrics
from appliance.webhooks.models import DeadPage, Delivery, Registration, WebhookRequest
from appliance.webhooks.outbox import Outbox
from appliance.webhooks.sender import Sender
from appliance.webhooks.signing import SecretStore
from appliance.webhooks.urls import AllowList, check_url

if TYPE_CHECKING:
    from appliance.queue.client import Queue

log = logging.getLogger(__name__)

#: After a Redis error, the first and the longest pause before a loop tries again (s).
ERROR_PAUSE_MIN_S = 0.2
ERROR_PAUSE_MAX_S = 10.0


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not re.fullmatch(ID_PATTERN, tenant):
        raise InvalidTenant(f"tenant {tenant!r} is not a valid id (letters, digits, _ . : -; max 128)")
    return tenant


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def where(url: str) -> str:
    """Scheme and host of a URL, for logs: its path and query may carry the receiver's own token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


class Webhooks:
    """Create with `Webhooks.open(queue, settings.webhooks)`."""

    def __init__(
        self, queue: Queue, settings: WebhookSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.queue = queue
        self.metrics = WebhookMetrics(registry)
        self.settings = settings
        self.keys = WebhookKeys(queue.name)
        self.allow = AllowList(settings.allow_private)
        self.outbox = Outbox(queue.client, self.keys, cluster=queue.cluster)
        self.secrets = SecretStore(queue.client, self.keys)
        self.sender = Sender(self.allow, settings.timeout_s, settings.concurrency)
        #: A delivery is leased for two attempt time limits and two seconds: an attempt never outlives it.
        self.lease_ms = int(settings.timeout_s * 2000) + 2000
        self.feed = Feed(
            queue,
            self.outbox,
            max_result_bytes=settings.max_result_bytes,
            claim_idle_ms=max(self.lease_ms, 30_000),
            block_ms=settings.poll_interval_ms,
        )
        self._wake = asyncio.Event()
        self.feed.on_queued = self._wake.set
        self.feed.metrics = self.metrics
        self._inflight: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, queue: Queue, settings: WebhookSettings, registry: CollectorRegistry | None = None
    ) -> Webhooks:
        """WebhooksUnavailable when the queue writes no event stream (`queue.events` pubsub or none). The
        metrics (appliance_webhook_*) go on `registry` (the API's /metrics), else on a private one."""
        if queue.settings.events not in (EventsMode.STREAM_AND_PUBSUB, EventsMode.STREAM):
            raise WebhooksUnavailable(
                f"webhooks need the queue's event stream, but queue.events is {queue.settings.events.value!r} "
                "(set it to 'stream+pubsub' or 'stream')"
            )
        webhooks = cls(queue, settings, registry)
        await ensure_group(queue.client, queue.keys.events)
        return webhooks

    async def check_url(self, url: str) -> None:
        """WebhookRefused (one-line reason) unless `url` may be called: http(s), no credentials, every address
        it resolves to public or in `webhooks.allow_private`."""
        await check_url(url, self.allow)

    async def register(self, tenant: str, job_id: str, request: WebhookRequest) -> None:
        """Send job `job_id`'s events to `request.url`, signed with `tenant`'s secret. Call it after the job was
        submitted (a job that already ended gets its terminal event all the same). WebhookRefused for a URL
        that may not be called. The caller checks that the job is the tenant's."""
        check_tenant(tenant)
        await self.check_url(request.url)
        registration = Registration(tenant=tenant, url=request.url, events=request.events)
        await self.queue.client.hset(self.keys.hooks, job_id, registration.model_dump_json())
        # Written first, read second: an end the feed read before the registration existed is caught here; one
        # it reads after is queued by both, under one id, so once.
        job = await self.queue.get(job_id)
        if job is None or not job.status.finished:
            return
        event = TERMINAL_OF[job.status]
        if event not in registration.events:
            await self.queue.client.hdel(self.keys.hooks, job_id)
            return
        delivery = delivery_of(
            self.queue.name,
            registration,
            job_id,
            job,
            event,
            at_ms=await self.queue.server_time_ms(),
            max_result_bytes=self.settings.max_result_bytes,
        )
        if await self.outbox.enqueue(delivery, job_id):
            self.metrics.queued.labels(event.value).inc()
            self._wake.set()

    async def unregister(self, job_ids: list[str]) -> None:
        """Forget the webhooks of jobs that were registered but never submitted (a submit that failed after
        `register`): nothing else removes a registration whose job never ends."""
        if job_ids:
            await self.queue.client.hdel(self.keys.hooks, *job_ids)

    # --- the delivery worker ------------------------------------------------------------------------------------

    async def run_delivery(self) -> None:
        """The delivery worker of this process: feeds events into the outbox and sends what is due, until
        cancelled. Redis going away is waited out; it never touches job processing."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._resilient("reading the event stream", self._feed_step))
                group.create_task(self._resilient("claiming deliveries", self._deliver_step))
        finally:
            for task in list(self._inflight):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._inflight, return_exceptions=True)
            await self.sender.close()

    async def _resilient(self, what: str, step: Callable[[], Awaitable[Any]]) -> None:
        pause = ERROR_PAUSE_MIN_S
        while True:
            if _cancelling():
                # A cancellation that redis-py swallowed (or turned into a ConnectionError) still ends the loop.
                raise asyncio.CancelledError
            try:
                await step()
                pause = ERROR_PAUSE_MIN_S
            except ResponseError as exc:
                if (
                    "NOGROUP" in str(exc) and not _cancelling()
                ):  # the stream was deleted (FLUSHDB, a new Redis): start over
                    with contextlib.suppress(RedisError):
                        await ensure_group(self.queue.client, self.queue.keys.events)
                    continue
                pause = await self._pause(what, exc, pause)
            except (RedisError, OSError) as exc:
                pause = await self._pause(what, exc, pause)

    async def _pause(self, what: str, exc: BaseException, pause: float) -> float:
        log.warning("webhooks: %s failed (%s); again in %.1fs", what, type(exc).__name__, pause)
        await asyncio.sleep(pause * (0.5 + random.random()))
        return min(pause * 2, ERROR_PAUSE_MAX_S)

    async def _feed_step(self) -> None:
        await self.feed.step()

    async def _deliver_step(self) -> None:
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return
        self._wake.clear()
        leased = await self.outbox.claim(free, self.lease_ms)
        for delivery in leased.deliveries:
            task = asyncio.create_task(self._attempt(delivery, leased.token), name=f"webhook:{delivery.id}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if len(leased.deliveries) < free:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_interval_ms / 1000):
                    await self._wake.wait()

    def backoff_ms(self, attempt: int) -> int:
        """Exponential backoff with equal jitter: half the ceiling, plus up to the other half at random."""
        s = self.settings
        ceiling = min(s.backoff_cap_s, s.backoff_base_s * 2 ** max(0, attempt - 1)) * 1000
        return int(ceiling / 2 + random.uniform(0, ceiling / 2))

    async def _attempt(self, delivery: Delivery, token: str) -> None:
        try:
            with self.metrics.duration.time():
                error = await self.sender.send(delivery, await self.secrets.signing(delivery.tenant))
            if error is None:
                self.metrics.attempts.labels("delivered").inc()
                await self.outbox.delivered(delivery.id, token)
                return
            await self._failed(delivery, token, error)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            # The lease runs out and another attempt (here or in another process) sends it again.
            log.warning("webhook %s: recording the attempt failed (%s)", delivery.id, type(exc).__name__)

    async def _failed(self, delivery: Delivery, token: str, error: str) -> None:
        now = await self.queue.server_time_ms()
        tried = delivery.model_copy(
            update={"attempts": delivery.attempts + 1, "last_error": error, "last_attempt_ms": now}
        )
        deadline = delivery.created_ms + self.settings.max_age_s * 1000
        if now >= deadline:
            log.warning(
                "webhook %s (job %s, %s) to %s given up after %d attempts: %s",
                delivery.id,
                delivery.job_id,
                delivery.type.value,
                where(delivery.url),
                tried.attempts,
                error,
            )
            self.metrics.attempts.labels("given_up").inc()
            await self.outbox.give_up(tried, token, self.settings.dead_keep)
            return
        # The last try falls at the deadline itself, so a delivery is never given up early.
        delay = min(self.backoff_ms(tried.attempts), deadline - now)
        log.info(
            "webhook %s (job %s) to %s failed (%s); attempt %d, again in %.1fs",
            delivery.id,
            delivery.job_id,
            where(delivery.url),
            error,
            tried.attempts,
            delay / 1000,
        )
        self.metrics.attempts.labels("retried").inc()
        await self.outbox.retry(tried, token, delay)

    # --- the tenants' views -------------------------------------------------------------------------------------

    async def dead(self, tenant: str, limit: int = 50, cursor: str | None = None) -> DeadPage:
        """One page of `tenant`'s given-up deliveries, newest first (`next_cursor` for the next page)."""
        return await self.outbox.dead(check_tenant(tenant), limit, cursor)

    async def retry_dead(self, tenant: str, ids: list[str] | None = None) -> int:
        """Put `tenant`'s dead deliveries (those of `ids`, or all) back in the outbox, their age counted
        afresh; returns how many (an id not in the tenant's dead list is not counted)."""
        check_tenant(tenant)
        chosen = ids if ids is not None else await self.outbox.dead_ids(tenant)
        now = await self.queue.server_time_ms()
        revived = sum([await self.outbox.revive(tenant, i, now) for i in chosen])
        if revived:
            self._wake.set()
        return revived

    async def secret(self, tenant: str, rotate: bool = False) -> str:
        """`tenant`'s signing secret (`whsec_...`), made on first use; `rotate` makes a new one (the old one
        still signs, beside it, for `webhooks.max_age_s`, so deliveries in flight verify with either)."""
        check_tenant(tenant)
        if rotate:
            return await self.secrets.rotate(tenant, self.settings.max_age_s * 1000)
        return await self.secrets.current(tenant)

    async def close(self) -> None:
        """Release the HTTP client (run_delivery's task must be cancelled first)."""
        await self.sender.close()

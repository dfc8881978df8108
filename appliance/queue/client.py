"""The queue as one object: four clients over one connection, and the facade most callers use.

queue = await Queue.connect("redis://127.0.0.1:6379/0")
job = await queue.submit(JobSpec(service="echo", payload={"hello": "world"}))
done = await queue.wait(job.id, timeout_s=30)

The work is split by who calls it: `queue.producer` (submit, cancel; producer.py), `queue.reader` (get, list,
wait, stats; reader.py), `queue.leases` (claim ... return the jobs of a worker; lease.py), `queue.housekeeper`
(reap; housekeeper.py), `queue.events` (the lifecycle stream; events.py), `queue.registry` (workers and
machines; registry.py), `queue.schedules` (repeating jobs; schedules.py), `queue.limits` (per-customer
weights; limits.py) and `queue.pauses` (pause and resume; pauses.py). The facade's methods are those clients'
bound methods, so a call site keeps one `queue` object instead of nine, and every method has exactly one
implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.config import RedisConnection, RedisMode
from appliance.config.queue import QueueSettings, ScriptsMode
from appliance.queue.conn import QueueConnection
from appliance.queue.events import EventLog
from appliance.queue.housekeeper import Housekeeper
from appliance.queue.keys import QueueKeys
from appliance.queue.lease import LeaseClient
from appliance.queue.limits import Limits
from appliance.queue.models import JobSpec
from appliance.queue.pauses import Pauses
from appliance.queue.producer import Producer
from appliance.queue.reader import Reader
from appliance.queue.redisclient import Closer, RedisModeError, check_mode, open_client
from appliance.queue.registry import Registry
from appliance.queue.schedules import Schedules
from appliance.queue.scripts import ScriptSet


class Queue:
    """One queue on one Redis (standalone, or a Cluster when `cluster`); safe to share between tasks."""

    def __init__(
        self,
        client: Any,
        *,
        queue_name: str = "default",
        settings: QueueSettings | None = None,
        scripts: ScriptSet | None = None,
        classifier: Callable[[JobSpec], JobSpec] | None = None,
        cluster: bool = False,
    ) -> None:
        settings = settings or QueueSettings()
        scripts = scripts or ScriptSet(use_functions=settings.scripts is ScriptsMode.FUNCTIONS)
        scripts.cluster = cluster
        #: Called after the client is closed (a Sentinel client's connections to the sentinels).
        self.closers: list[Closer] = []
        self.conn = QueueConnection(client, QueueKeys(queue_name), settings, scripts, cluster)
        self.producer = Producer(self.conn, classifier)
        self.reader = Reader(self.conn)
        self.leases = LeaseClient(self.conn)
        self.housekeeper = Housekeeper(self.conn)
        self.events = EventLog(self.conn)
        self.registry = Registry(self.conn)
        self.schedules = Schedules(self.conn, self.producer)
        self.limits = Limits(self.conn)
        self.pauses = Pauses(self.conn)
        #: The process's WakeHub for this queue object (appliance.queue.hub), made by the first WorkerSession.
        self.wake_hub: Any = None
        # The facade: each name is one client's bound method.
        self.submit, self.submit_many, self.cancel, self.retry = (
            self.producer.submit,
            self.producer.submit_many,
            self.producer.cancel,
            self.producer.retry,
        )
        self.get, self.require, self.list_jobs = self.reader.get, self.reader.require, self.reader.list_jobs
        self.wait, self.stats, self.tenant_page = self.reader.wait, self.reader.stats, self.reader.tenant_page
        self.server_time_ms = self.conn.server_time_ms
        leases = self.leases
        self.claim, self.claim_many, self.finish_and_claim = (
            leases.claim,
            leases.claim_many,
            leases.finish_and_claim,
        )
        self.worker_class, self.register_class = leases.worker_class, leases.register_class
        self.heartbeat, self.progress = leases.heartbeat, leases.progress
        self.complete, self.complete_many, self.fail = leases.complete, leases.complete_many, leases.fail
        self.finish_cancelled, self.release, self.retry_delay_ms = (
            leases.finish_cancelled,
            leases.release,
            leases.retry_delay_ms,
        )
        self.jobs_of_worker, self.return_jobs_of_worker = leases.jobs_of_worker, leases.return_jobs_of_worker
        self.reap = self.housekeeper.reap
        leases.on_children_released = self.housekeeper.requeue_due
        self.parent_results, self.customers_of = self.reader.parent_results, self.reader.customers_of

    @classmethod
    async def connect(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue_name: str = "default",
        settings: QueueSettings | None = None,
        password: str | None = None,
        username: str | None = None,
        cluster: bool = False,
        classifier: Callable[[JobSpec], JobSpec] | None = None,
        **redis_kwargs: Any,
    ) -> Queue:
        """`open` on a URL (a Cluster seed when `cluster`): for tests and scripts; processes use
        `appliance.queue.factory.connect_queue`, which reads `redis.mode` and the credentials from the settings."""
        mode = RedisMode.CLUSTER if cluster else RedisMode.STANDALONE
        conn = RedisConnection(url, password, username, None, mode=mode)
        return await cls.open(
            conn, queue_name=queue_name, settings=settings, classifier=classifier, **redis_kwargs
        )

    @classmethod
    async def open(
        cls,
        conn: RedisConnection,
        *,
        queue_name: str = "default",
        settings: QueueSettings | None = None,
        classifier: Callable[[JobSpec], JobSpec] | None = None,
        **redis_kwargs: Any,
    ) -> Queue:
        """Connect as `conn.mode` says, check the server is of that kind (RedisModeError: one line naming
        `redis.mode`) and answers (with `queue.scripts = "functions"`, also that its library is this version's:
        ScriptLibraryError when it differs). Nothing is loaded into Redis here."""
        if conn.mode is RedisMode.CLUSTER and settings is not None and settings.durable_replicas:
            raise RedisModeError(
                "queue.durable_replicas needs redis.mode = standalone or sentinel: in a Cluster a script and "
                "its WAIT may travel on different connections, so WAIT cannot vouch for the write"
            )
        client, cluster, closers = open_client(conn, **redis_kwargs)
        queue = cls(client, queue_name=queue_name, settings=settings, classifier=classifier, cluster=cluster)
        queue.closers.extend(closers)
        try:
            await check_mode(client, conn)
            await client.ping()
            await queue.scripts.load(client)
        except BaseException:
            await queue.close()
            raise
        return queue

    async def close(self) -> None:
        try:
            await self.client.aclose()
        finally:
            for closer in self.closers:
                await closer()

    @property
    def client(self) -> Any:
        return self.conn.client

    @property
    def keys(self) -> QueueKeys:
        return self.conn.keys

    @property
    def settings(self) -> QueueSettings:
        return self.conn.settings

    @property
    def scripts(self) -> ScriptSet:
        return self.conn.scripts

    @property
    def cluster(self) -> bool:
        return self.conn.cluster

    @property
    def name(self) -> str:
        return self.conn.name

    @property
    def channel_prefix(self) -> str:
        """What the lifecycle channels' names start with: nothing (shared) or the queue's key prefix."""
        return self.conn.channel_prefix

    def channel(self, name: str) -> str:
        """The name of lifecycle channel `name` (`complete_job`, ...) for this queue's `queue.channels`."""
        return self.conn.channel(name)

    @property
    def classifier(self) -> Callable[[JobSpec], JobSpec] | None:
        """Assigns a pool to jobs that name none (appliance.pools.classify), applied before the shape is taken."""
        return self.producer.classifier

    @classifier.setter
    def classifier(self, value: Callable[[JobSpec], JobSpec] | None) -> None:
        self.producer.classifier = value

    @property
    def on_retry_scheduled(self) -> Callable[[int], None] | None:
        """Called with the delay (ms) of every retry `fail` schedules (this process's reaper wakes for it)."""
        return self.leases.on_retry_scheduled

    @on_retry_scheduled.setter
    def on_retry_scheduled(self, value: Callable[[int], None] | None) -> None:
        self.leases.on_retry_scheduled = value


__all__ = ["Queue"]

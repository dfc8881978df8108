"""The base of connectors for remote-job APIs: submit a job over HTTP, poll its status, cancel it remotely.

Replicate and RunPod (and the next such provider) differ only in paths, payload checks, the terminal statuses
and how a final status maps onto a result; the loop is shared: one POST creates the remote job, then its
status is polled with a delay growing ×1.5 from `poll_initial_s` to `poll_max_s`, the whole bounded by the job
timeout (on expiry the remote job is cancelled and the attempt fails retryable). `cancel()` marks the attempt
(`tasks.Attempts`) and cancels its remote job when one exists; a cancel that arrives before the service has
named the job is sent as soon as it does. The remote id lives only in memory, so a re-claimed job starts a
new remote job (these services have no caller-chosen ids).
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from appliance.worker.connectors.base import (
    Connector,
    ConnectorJob,
    ConnectorOptions,
    ConnectorResult,
    ProgressCallback,
    RetryableError,
)
from appliance.worker.connectors.http import JsonApi
from appliance.worker.connectors.tasks import Attempts
from appliance.worker.storage import OutputStorage

#: Growth of the delay between two status polls.
BACKOFF = 1.5


class PollingOptions(ConnectorOptions):
    """Options of every polling connector (in `connectors.<name>.extra`)."""

    poll_initial_s: float = Field(default=0.5, gt=0)
    poll_max_s: float = Field(default=5.0, gt=0)
    #: Limit of one HTTP request (the job as a whole is bounded by its timeout).
    request_timeout_s: float = Field(default=30.0, gt=0)


@dataclass
class RemoteJob:
    """One attempt's job on the remote service."""

    job: ConnectorJob
    #: Where to POST it, and what.
    path: str
    body: dict[str, Any]
    #: What the paths of this job hang under besides its id (RunPod: the endpoint id).
    scope: str = ""
    #: The service's id for it, once the submit answered.
    id: str = ""
    #: The latest status document.
    state: dict[str, Any] = field(default_factory=dict)
    #: The highest progress reported so far, and the last status reported.
    percent: float = -1.0
    status: Any = None
    #: Streamed output chunks, for services that stream.
    chunks: list[Any] = field(default_factory=list)


class PollingConnector(Connector):
    """Submit, poll with backoff, cancel remotely; subclasses supply the service's paths and statuses."""

    Options: ClassVar[type[ConnectorOptions]] = PollingOptions
    options: PollingOptions
    #: Service name in messages ("Replicate") and what it calls a job ("prediction"), its default base URL and
    #: the statuses that end a job.
    service: ClassVar[str]
    noun: ClassVar[str] = "job"
    default_base_url: ClassVar[str]
    terminal: ClassVar[frozenset[str]]

    def __init__(self, *, options: ConnectorOptions, storage: OutputStorage) -> None:
        super().__init__(options=options, storage=storage)
        self.api = JsonApi(
            self.options.base_url or self.default_base_url,
            self.options.api_key,
            service=self.service,
            timeout_s=self.options.request_timeout_s,
        )
        self.attempts = Attempts()

    # ---- what a provider supplies --------------------------------------------------------------------
    @abstractmethod
    def prepare(self, job: ConnectorJob) -> RemoteJob:
        """Check the payload (PermanentError names what is wrong) and say what to POST where."""

    @abstractmethod
    def status_path(self, remote: RemoteJob) -> str:
        """Where the job's status is read."""

    @abstractmethod
    def cancel_path(self, remote: RemoteJob) -> str:
        """Where the job is cancelled (POST)."""

    @abstractmethod
    async def result(self, remote: RemoteJob, cancelled: bool) -> ConnectorResult:
        """Map the final status onto a result or an error; `cancelled`: this attempt was cancelled by us."""

    async def report(self, remote: RemoteJob, progress: ProgressCallback) -> None:
        """Report what the latest status says about progress (called before each wait)."""
        return None

    async def fetch(self, remote: RemoteJob, progress: ProgressCallback) -> dict[str, Any]:
        """The job's next status document."""
        return await self.api.request("GET", self.status_path(remote))

    # ---- the shared loop -----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.api.start()

    async def close(self) -> None:
        await self.api.close()

    async def cancel(self, job_id: str, token: str | None = None) -> None:
        for attempt in self.attempts.cancel(job_id, token):
            if attempt.remote is not None:
                await self.api.answers("POST", self.cancel_path(attempt.remote))

    async def process(self, job: ConnectorJob, progress: ProgressCallback) -> ConnectorResult:
        remote = self.prepare(job)
        timeout = job.timeout_s or self.options.default_timeout_s
        with self.attempts.open(job) as attempt:
            try:
                async with asyncio.timeout(timeout):
                    remote.state = await self.api.request("POST", remote.path, remote.body)
                    if "id" not in remote.state:
                        raise RetryableError(
                            f"{self.service} sent a {self.noun} without an id", code="bad_response"
                        )
                    remote.id = str(remote.state["id"])
                    attempt.remote = remote
                    if attempt.cancelled.is_set():  # cancelled while the submit was under way
                        await self.api.answers("POST", self.cancel_path(remote))
                    await self._follow(remote, progress)
            except TimeoutError:
                await self.cancel(job.id, job.token)
                raise RetryableError(
                    f"{self.service} {self.noun} exceeded the job timeout of {timeout:g}s", code="timeout"
                ) from None
        return await self.result(remote, attempt.cancelled.is_set())

    async def _follow(self, remote: RemoteJob, progress: ProgressCallback) -> None:
        delay = self.options.poll_initial_s
        while remote.state.get("status") not in self.terminal:
            await self.report(remote, progress)
            await asyncio.sleep(delay)
            delay = min(delay * BACKOFF, self.options.poll_max_s)
            remote.state = await self.fetch(remote, progress)

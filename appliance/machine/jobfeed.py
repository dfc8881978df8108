"""The supervisor's job-event follower: it feeds the job histograms of /metrics from the queue's event stream."""

from __future__ import annotations

from redis.exceptions import RedisError

from appliance.machine.context import SupervisorContext


async def follow_job_events(ctx: SupervisorContext) -> None:
    """Feed the job histograms from the queue's event stream, from now on (history is not replayed)."""
    assert ctx.queue is not None and ctx.jobs is not None
    last_id = "$"
    while not ctx.stop_event.is_set():
        try:
            last_id, events = await ctx.queue.events.tail(last_id, block_ms=2000, count=500)
        except (RedisError, OSError):
            if await ctx.sleep(1.0):
                return
            continue
        for event in events:
            ctx.jobs.observe(event.entry_id, event.fields)
        ctx.jobs.worker_ids = set(ctx.state.plan.worker_ids()) | set(ctx.state.workers)

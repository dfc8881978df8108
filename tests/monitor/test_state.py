"""MonitorState bookkeeping: offline rules, job event ordering across the stream and pub/sub, series."""

from __future__ import annotations

from appliance.monitor.state import MAX_JOBS, MonitorState


def _status(mid: str, **extra: object) -> dict[str, object]:
    return {"machine_id": mid, "update_type": "periodic", "status": {"machine": {"phase": "ready"}}, **extra}


def test_machine_offline_rules() -> None:
    state = MonitorState("default", default_interval_s=10)
    state.apply_machine_status(_status("a"), seen_ms=1_000)
    state.apply_machine_status(_status("b", status_interval_s=1), seen_ms=1_000)
    assert state.tick(20_000) == ["b"]  # b is silent for 19 s > 2 × 1 s; a's 2 × 10 s not yet over
    assert state.machines["a"].online and state.machines["b"].offline_reason == "silent for 19s"
    assert state.tick(21_001) == ["a"]
    state.apply_machine_status(_status("a"), seen_ms=22_000)
    assert state.machines["a"].online
    state.set_registration("a", None)  # registration expired although the status is fresh
    assert state.tick(22_001) == ["a"] and state.machines["a"].offline_reason == "registration expired"
    state.apply_machine_status(_status("a", update_type="shutdown"), seen_ms=23_000)
    assert not state.machines["a"].online and state.machines["a"].offline_reason == "shut down"
    state.apply_machine_status(_status("a", update_type="machine_ready"), seen_ms=24_000)
    assert state.machines["a"].online  # a new boot registers again
    view = state.machine_view(state.machines["a"], 24_500)
    assert view["age_s"] == 0.5 and view["interval_s"] == 10


def test_job_lifecycle_from_stream_with_pubsub_details() -> None:
    state = MonitorState("default")
    assert state.apply_job_event({"event": "submitted", "job": "j1", "service": "echo", "shape": "s1"}, 1000)
    state.shape_pool["s1"] = "fast"
    assert (
        state.apply_job_event(
            {
                "event": "progress",
                "job": "j1",
                "queue": "default",
                "percent": "5",
                "progress": {"percent": 5, "message": "early"},
            },
            details_only=True,
        )
        is None
    )
    state.apply_job_event(
        {"event": "claimed", "job": "j1", "worker": "w1", "attempt": "1", "wait_ms": "40"}, 1100
    )
    job = state.apply_job_event({"event": "progress", "job": "j1", "worker": "w1", "percent": "40"}, 1200)
    assert job is not None and (job.status, job.percent) == ("running", 40.0)
    state.apply_job_event(
        {
            "event": "progress",
            "job": "j1",
            "queue": "default",
            "progress": {"percent": 40, "message": "sampling"},
        },
        details_only=True,
    )
    assert state.jobs["j1"].message == "sampling"
    # The job fails and is retried, then claimed again and completed.
    state.apply_job_event({"event": "retrying", "job": "j1", "attempt": "1"}, 1300)
    assert (state.jobs["j1"].status, state.jobs["j1"].percent) == ("pending", 0.0)
    state.apply_job_event(
        {"event": "retrying", "job": "j1", "queue": "default", "error": {"message": "CUDA out of memory"}},
        details_only=True,
    )
    assert state.jobs["j1"].error == "CUDA out of memory"
    state.apply_job_event({"event": "claimed", "job": "j1", "worker": "w2", "attempt": "2"}, 1400)
    state.apply_job_event({"event": "completed", "job": "j1", "worker": "w2", "duration_ms": "250"}, 1650)
    job = state.jobs["j1"]
    assert (job.status, job.percent, job.attempt, job.worker, job.duration_ms) == (
        "completed",
        100.0,
        2,
        "w2",
        250.0,
    )
    # Late copies never move a finished job backwards.
    assert state.apply_job_event({"event": "progress", "job": "j1", "percent": "10"}, 1700) is None
    assert state.apply_job_event({"event": "claimed", "job": "j1", "attempt": "2"}, 1700) is None
    assert state.job_view(job)["pool"] == "fast"
    series = state.series.render(1650)
    assert (
        sum(series["completed"]) == 1 and series["latency_p50_s"][-1] == 0.25 and sum(series["failed"]) == 0
    )


def test_other_queues_and_garbage_are_ignored_and_list_is_capped() -> None:
    state = MonitorState("default")
    assert state.apply_job_event({"event": "submitted", "job": "x", "queue": "other"}) is None
    assert state.apply_job_event({"event": "nonsense", "job": "x"}) is None
    assert state.apply_job_event({"event": "submitted"}) is None
    assert state.apply_machine_status({"no": "id"}) is None
    for i in range(MAX_JOBS + 10):
        state.apply_job_event({"event": "submitted", "job": f"j{i}"}, 1000 + i)
    assert len(state.jobs) == MAX_JOBS and f"j{MAX_JOBS + 9}" in state.jobs and "j0" not in state.jobs
    snap = state.snapshot(5000)
    assert snap["type"] == "full_state_snapshot" and snap["jobs"][0]["id"] == f"j{MAX_JOBS + 9}"


def test_a_machine_is_judged_by_its_own_status_interval() -> None:
    """The supervisor's real payload carries its interval: a machine publishing every 60 s is online after
    30 s of silence even to a monitor whose own interval is 5 s."""
    from appliance.machine.plan import MachineType, ServicePlan
    from appliance.machine.state import MachineState
    from appliance.machine.status import build_status

    machine = MachineState("slow", "api", ServicePlan("slow", MachineType("api")), status_interval_s=60)
    state = MonitorState("default", default_interval_s=5)
    state.apply_machine_status(build_status(machine), seen_ms=1_000)
    assert state.tick(31_000) == [] and state.machines["slow"].online
    assert state.tick(121_001) == ["slow"]

"""Matching rules: each requirement kind against worker capabilities, decided once per shape."""

from __future__ import annotations

import pytest

from appliance.queue import Capabilities, JobSpec, Requirements
from appliance.queue.shapes import GPU_MEMORY_BUCKETS_GB, bucket, matches, shape_of


def record(**req: object) -> dict:
    service = req.pop("service", "comfyui")
    customer = req.pop("customer", None)
    pool = req.pop("pool_field", None)
    return shape_of(
        JobSpec(service=service, customer_id=customer, pool=pool, requirements=Requirements(**req))
    )[1]


def caps(**kw: object) -> Capabilities:
    kw.setdefault("services", ["comfyui"])
    return Capabilities(**kw)


def test_same_requirements_same_shape_regardless_of_order() -> None:
    a = shape_of(JobSpec(service="comfyui", requirements=Requirements(tags=["b", "a"], models=["y", "x"])))
    b = shape_of(JobSpec(service="comfyui", requirements=Requirements(tags=["a", "b"], models=["x", "y"])))
    assert a == b
    c = shape_of(JobSpec(service="comfyui", requirements=Requirements(tags=["a"])))
    assert c[0] != a[0]


def test_payload_priority_and_customer_without_isolation_do_not_split_shapes() -> None:
    a = shape_of(JobSpec(service="echo", payload={"x": 1}, priority=5, customer_id="c1"))
    b = shape_of(JobSpec(service="echo", payload={"y": 2}, priority=0, customer_id="c2"))
    assert a[0] == b[0]


def test_numeric_minimums_round_up_to_buckets() -> None:
    assert bucket(10.5, GPU_MEMORY_BUCKETS_GB) == 12
    assert bucket(24, GPU_MEMORY_BUCKETS_GB) == 24
    assert bucket(300, GPU_MEMORY_BUCKETS_GB) == 300
    assert bucket(None, GPU_MEMORY_BUCKETS_GB) is None
    # 10.5 GB and 11 GB share a shape; a worker with 11 GB cannot take it (rounded up to 12), one with 12 can.
    assert (
        shape_of(JobSpec(service="comfyui", requirements=Requirements(gpu_memory_gb=10.5)))[0]
        == shape_of(JobSpec(service="comfyui", requirements=Requirements(gpu_memory_gb=11)))[0]
    )
    assert not matches(caps(gpu_memory_gb=11), record(gpu_memory_gb=10.5))
    assert matches(caps(gpu_memory_gb=12), record(gpu_memory_gb=10.5))


def test_service_must_be_offered() -> None:
    assert matches(caps(services=["comfyui", "echo"]), record(service="echo"))
    assert not matches(caps(services=["comfyui"]), record(service="openai_text"))


@pytest.mark.parametrize(
    "key,need,have,ok",
    [
        ("gpu_memory_gb", 24, 24, True),
        ("gpu_memory_gb", 24, 16, False),
        ("ram_gb", 32, 64, True),
        ("ram_gb", 32, 16, False),
        ("cpu_cores", 8, 8, True),
        ("cpu_cores", 8, 4, False),
        ("gpu_count", 2, 2, True),
        ("gpu_count", 2, 4, True),
        ("gpu_count", 2, 1, False),
        ("gpu_count", 3, 2, False),
    ],
)
def test_hardware_minimums(key: str, need: float, have: float, ok: bool) -> None:
    assert matches(caps(**{key: have}), record(**{key: need})) is ok


def test_models_must_all_be_available() -> None:
    rec = record(models=["sdxl.safetensors", "vae.pt"])
    assert matches(caps(models={"comfyui": ["sdxl.safetensors", "vae.pt", "other"]}), rec)
    assert not matches(caps(models={"comfyui": ["sdxl.safetensors"]}), rec)
    assert not matches(caps(models={"echo": ["sdxl.safetensors", "vae.pt"]}), rec)
    assert matches(caps(models="all"), rec)


def test_pool_and_region_are_exact_when_required() -> None:
    assert matches(caps(pool="standard"), record(pool="standard"))
    assert not matches(caps(pool="fast"), record(pool="standard"))
    assert not matches(caps(), record(pool="standard"))
    assert matches(caps(pool="heavy"), record())  # a job without a pool runs anywhere
    assert matches(caps(region="eu"), record(region="eu"))
    assert not matches(caps(region="us"), record(region="eu"))
    assert matches(caps(pool="fast"), record(pool_field="fast"))


def test_positive_and_negative_tags() -> None:
    rec = record(tags=["nsfw-filter", "sdxl"], not_tags=["preemptible"])
    assert matches(caps(tags=["sdxl", "nsfw-filter", "a100"]), rec)
    assert not matches(caps(tags=["sdxl"]), rec)
    assert not matches(caps(tags=["sdxl", "nsfw-filter", "preemptible"]), rec)


def test_workflow_pin() -> None:
    assert matches(caps(workflow_id="wf1"), record(workflow="wf1"))
    assert not matches(caps(workflow_id="wf1"), record(workflow="wf2"))
    assert not matches(caps(workflow_id="wf1"), record())  # a pinned worker takes only its workflow
    assert matches(caps(), record(workflow="wf1"))  # unpinned workers take any


def test_customer_isolation() -> None:
    strict_job = record(isolation="strict", customer="acme")
    loose_job = record(isolation="loose", customer="acme")
    open_job = record()
    strict_worker = caps(customer_isolation="strict", allowed_customers=["acme"])
    assert matches(strict_worker, strict_job)
    assert matches(strict_worker, loose_job)
    assert not matches(strict_worker, open_job)  # strict workers never take anonymous shapes
    assert not matches(caps(customer_isolation="strict", allowed_customers=["other"]), strict_job)
    assert not matches(caps(), strict_job)
    assert not matches(caps(customer_isolation="loose"), strict_job)
    assert matches(caps(customer_isolation="loose"), loose_job)
    assert not matches(caps(), loose_job)
    assert not matches(caps(customer_isolation="loose", denied_customers=["acme"]), loose_job)
    assert not matches(caps(customer_isolation="loose", allowed_customers=["x"]), loose_job)
    assert matches(caps(), open_job)


def test_isolation_requires_a_customer() -> None:
    with pytest.raises(ValueError, match="needs a customer_id"):
        JobSpec(service="comfyui", requirements=Requirements(isolation="strict"))


def test_contradictory_tags_are_rejected() -> None:
    with pytest.raises(ValueError, match="tags and not_tags"):
        Requirements(tags=["a"], not_tags=["a"])


def test_gpu_count_is_exact_and_absent_when_not_asked() -> None:
    # Not bucketed: a 3-GPU job does not need a 4-GPU worker. 0 means "no requirement", like an absent key.
    assert record(gpu_count=3)["gpu_count"] == 3
    assert "gpu_count" not in record(gpu_count=0) and "gpu_count" not in record()
    assert (
        shape_of(JobSpec(service="comfyui"))[0]
        == shape_of(JobSpec(service="comfyui", requirements=Requirements(gpu_count=0)))[0]
    )


def test_machine_type_is_exact_when_required() -> None:
    assert matches(caps(machine_type="gpu"), record(machine_type="gpu"))
    assert not matches(caps(machine_type="api"), record(machine_type="gpu"))
    assert not matches(caps(), record(machine_type="api"))  # a worker that does not say its type
    assert matches(caps(machine_type="api"), record())
    with pytest.raises(ValueError, match="machine_type"):
        Requirements(machine_type="tpu")  # type: ignore[arg-type]

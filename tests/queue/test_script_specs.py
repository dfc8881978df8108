"""Each script's KEYS come from one declarative spec, checked here against the script's own header."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from appliance.queue import Queue
from appliance.queue.errors import QueueError, ScriptCode, WrongShape, raise_for_code
from appliance.queue.events import MEANING, EventKind
from appliance.queue.keys import QueueKeys
from appliance.queue.scripts import SCRIPT_NAMES, declared_keys, header_keys, load_sources
from appliance.queue.specs import SPECS, UNCHARGE_KEYS


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_the_spec_lists_the_keys_the_header_declares(name: str) -> None:
    names, tail = header_keys(name)
    assert list(SPECS[name].keys) == names
    assert SPECS[name].candidate_tail is tail
    built = SPECS[name].build(QueueKeys("q"), shape="s1", class_id="c1", candidates=["s1", "s2"])
    per_shape = 2 if SPECS[name].tail == "ready+idle" else 1  # unlimit: a ready and an idle key per shape
    assert len(built) == (declared_keys(name) or len(names) + 2 * per_shape)
    assert len(set(built)) == len(built)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_only_scripts_that_emit_or_publish_take_the_common_prefix(name: str) -> None:
    source = load_sources()[name]
    header = source.split("]]", 1)[0]
    assert ("ARGV[1]  channel prefix" in header) is SPECS[name].common
    assert SPECS[name].common is ("emit(events_key" in source or "PUBLISH" in source)


def test_finish_claim_runs_complete_and_claim_unchanged_on_their_own_keys() -> None:
    sources = load_sources()
    source = sources["finish_claim"]
    outer = list(SPECS["finish_claim"].keys)
    for inner in ("complete", "claim"):
        # The same source, but for `shared`: nil alone, finish_claim.lua's table (the third argument) inside it.
        alone = sources[inner]
        assert alone.count("local shared = nil") == 1, inner
        inside = alone.replace("local shared = nil", "-- (shared: the third argument)")
        assert f"local function {inner}_(KEYS, ARGV, shared)\n{inside}\nend" in source
        picked = ", ".join(f"KEYS[{outer.index(key) + 1}]" for key in SPECS[inner].keys)
        assert f"local {inner}_keys = {{{picked}}}" in source


def test_back_in_line_is_written_once() -> None:
    sources = load_sources()
    for name in ("submit", "fail", "release", "requeue"):
        assert sources[name].count("local function back_in_line(") == 1
        assert "rcall('ZADD', heads_key, 'LT'" not in sources[name]


@pytest.mark.parametrize("code", [c for c in ScriptCode if c < 0])
def test_every_failure_code_has_its_own_error(code: ScriptCode) -> None:
    with pytest.raises(QueueError) as raised:
        raise_for_code(int(code), "j1")
    assert "unknown code" not in str(raised.value)


async def test_a_call_naming_the_wrong_shape_changes_nothing(queue: Queue) -> None:
    job = await queue.submit({"service": "echo"})
    other = await queue.submit({"service": "echo", "requirements": {"gpu_count": 1}})
    claimed = await queue.claim("w1", [job.shape])
    assert claimed is not None
    with pytest.raises(WrongShape, match=job.id):
        await queue.fail(job.id, claimed.token, "x", retryable=True, shape=other.shape)
    with pytest.raises(WrongShape):
        await queue.release(job.id, claimed.token, shape=other.shape)
    assert (await queue.require(job.id)).worker_id == "w1"


def test_every_event_the_scripts_emit_has_one_meaning() -> None:
    emitted = {
        name
        for source in load_sources().values()
        for name in re.findall(r"emit\(events_key, mode, maxlen, '\w+', queue, '(\w+)'", source)
        + re.findall(r"emit_many\(events_key, mode, maxlen, '\w+', queue, '(\w+)'", source)
    }
    assert emitted == {kind.value for kind in EventKind}
    assert set(MEANING) == set(EventKind)


OUTSIDE_QUEUE_FORBIDDEN = re.compile(r"\.(xread|xrange|xrevrange|hgetall)\(|import keys as machine_keys")


def test_no_module_outside_the_queue_reads_its_storage() -> None:
    root = Path(__file__).resolve().parents[2] / "appliance"
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if "queue" not in path.relative_to(root).parts[:1]
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if OUTSIDE_QUEUE_FORBIDDEN.search(line)
    ]
    assert offenders == []


def test_scripts_that_end_a_lease_take_the_limit_keys_last() -> None:
    """includes/uncharge.lua reads its keys as the script's last four: every script that includes it lists them
    there (a key added to such a script goes before them)."""
    users = [name for name, source in load_sources().items() if "local function uncharge(" in source]
    # finish_claim.lua runs complete.lua as a function given complete's own KEYS (built by name): its order.
    assert sorted(users) == ["complete", "fail", "finish_claim", "release", "requeue"]
    for name in set(users) - {"finish_claim"}:
        assert list(SPECS[name].keys[-4:]) == UNCHARGE_KEYS.split(), name

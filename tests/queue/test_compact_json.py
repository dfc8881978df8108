"""compact_json (a job's result as the queue stores it) writes exactly what json.dumps with its options writes."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

import pytest

from appliance.queue.lease import compact_json

VALUES: list[Any] = [
    {},
    {"echo": {}, "attempt": 1, "outputs": []},
    'é☃\n"',
    1.5,
    float("nan"),
    None,
    [1, {"at": datetime.datetime(2020, 1, 1)}],
    {1: 2, False: 3, None: 4, 1.5: 5},
    (1, 2),
]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


@pytest.mark.parametrize("value", VALUES)
def test_it_writes_what_json_dumps_writes(value: Any) -> None:
    assert compact_json(value) == _dumps(value)


def test_a_value_that_failed_leaves_nothing_behind() -> None:
    # The encoder is kept between calls: a failure half-way must not make a later value look circular.
    shared: list[Any] = [1]
    loop: list[Any] = [shared]
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        compact_json(loop)
    assert compact_json([shared, shared]) == "[[1],[1]]"


def test_threads_encode_the_same_value_at_once() -> None:
    value = {"rows": [{"i": i, "at": datetime.date(2020, 1, 1)} for i in range(2000)]}
    expected = _dumps(value)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(compact_json(value))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4

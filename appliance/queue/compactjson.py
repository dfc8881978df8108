"""The JSON the queue stores for results, progress and errors: compact, anything unknown as its str().

compact_json({"a": [1, 2]})        # '{"a":[1,2]}'
"""

from __future__ import annotations

import json
import threading
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
#: The C encoder `_ENCODER.encode` builds for each call, built once per thread (its cycle markers are its own).
_C_ENCODERS = threading.local()


def _c_encoder() -> Any:
    if c_make_encoder is None:  # pragma: no cover - CPython without the json speedups
        return None
    return c_make_encoder({}, str, encode_basestring_ascii, None, ":", ",", False, False, True)


def compact_json(value: Any) -> str:
    """The JSON the queue stores for a result: compact, anything unknown as its str(); exactly what
    `_ENCODER.encode` writes, without building the encoder's C half per call (a result per job)."""
    try:
        encode = _C_ENCODERS.encode
    except AttributeError:
        encode = _C_ENCODERS.encode = _c_encoder()
    if encode is None:  # pragma: no cover
        return _ENCODER.encode(value)
    try:
        return "".join(encode(value, 0))
    except BaseException:
        _C_ENCODERS.encode = _c_encoder()  # its cycle markers may still hold the failed value's containers
        raise


class EncodedJSON(str):
    """A result already encoded by `compact_json` (the worker measured its size with it): sent as it is."""

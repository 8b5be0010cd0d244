"""The policy server's wire format: msgpack maps over websocket binary frames, numpy arrays
inside them. Shared by `dpjax.server` and `dpjax.client`; needs numpy and msgpack, not JAX.

Every message is a map with a "type":

    server -> client, on connect   {"type": "metadata", ...}      (see `dpjax.server`)
    client -> server               {"type": "act", "id": int, "observation": {key: array},
                                    "key": uint32 array (optional), "seed": int (optional)}
    server -> client               {"type": "actions", "id": int, "actions": array,
                                    "server_ms": float, "batched_with": int}
    client -> server               {"type": "stats", "id": int}
    server -> client               {"type": "stats", "id": int, ...}
    server -> client, on bad input {"type": "error", "id": int or None, "error": str}

An array travels as {"__ndarray__": [dtype str, shape list, raw bytes]} (C order, little
endian); only numeric and bool dtypes are accepted.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 2**20  # a batch of 64 2-step 96x96 RGB frames is ~3.5 MiB
_ARRAY_TAG = "__ndarray__"


class ProtocolError(ValueError):
    """A message that is not msgpack, not a map, or holds a malformed array."""


def _encode_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"arrays of dtype {value.dtype} cannot be sent (numeric only)")
        array = np.ascontiguousarray(value, value.dtype.newbyteorder("<"))
        return {_ARRAY_TAG: [array.dtype.str, list(array.shape), array.tobytes()]}
    raise TypeError(f"cannot send a {type(value).__name__}")


def _decode_array(spec: Any) -> np.ndarray:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise ProtocolError("an array must be [dtype, shape, bytes]")
    dtype_str, shape, data = spec
    try:
        dtype = np.dtype(dtype_str)
    except TypeError as e:
        raise ProtocolError(f"unknown array dtype {dtype_str!r}") from e
    if dtype.kind not in "biuf":
        raise ProtocolError(f"array dtype {dtype} is not numeric")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ProtocolError(f"array shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("array data must be bytes")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            f"array of shape {tuple(shape)} and dtype {dtype} needs {expected} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _decode_hook(obj: dict) -> Any:
    if _ARRAY_TAG in obj:
        return _decode_array(obj[_ARRAY_TAG])
    return obj


def pack(message: dict[str, Any]) -> bytes:
    """A message map (numpy arrays allowed at any depth) -> bytes."""
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    """Bytes -> a message map with a string "type"; ProtocolError naming what is wrong."""
    if isinstance(data, str):
        raise ProtocolError("text frames are not accepted: send msgpack in a binary frame")
    try:
        message = msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several unrelated types on garbage
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ProtocolError(f"not a msgpack message ({detail})") from e
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a map, got {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        raise ProtocolError('a message needs a string "type"')
    return message

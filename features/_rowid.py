"""Generated event ids: a documented 128-bit hash of an event's values, in numpy.

The function is ours, written with plain 64-bit integer arithmetic, so an id does
not change with the polars, pyarrow or numpy version, the machine or the batch size
(polars' ``hash`` promises none of that).

An event is hashed from the values of its typed columns, in the order of
``LOG_SCHEMA`` (``event_id``, ``schema_version``, ``published_at`` and ``raw``
excluded). Each non-null value becomes one 64-bit word ``v``:

* an integer, time (microseconds since the epoch, UTC) or true/false (1/0): its
  two's-complement bits;
* a text: :func:`text_digests` of its UTF-8 bytes.

``v`` is tagged with the column's position ``c``: ``v ^ (c + 1) * 0x9E3779B97F4A7C15``,
and folded into two lanes, ``h = step((h ^ v) * M)`` with ``M`` =
0xC2B2AE3D27D4EB4F and 0x165667B19E3779F9, ``step(x) = x ^ (x >> 32)`` and
``x ^ (x >> 29)``. The lanes start at 0x243F6A8885A308D3 and 0x13198A2E03707344.
Null values are skipped. The id is ``<prefix>-`` and both lanes, each through
splitmix64's finaliser, as 32 hex digits. Not cryptographic: 128 bits make an
accidental collision among a billion events about 1e-21 likely.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

__all__ = ["U64", "Lanes", "hash_columns", "hex_id_array", "hex_ids", "text_digests"]

U64 = npt.NDArray[np.uint64]
Lanes = tuple[U64, U64]

_TAG: Final = 0x9E3779B97F4A7C15
_M1: Final = np.uint64(0xC2B2AE3D27D4EB4F)
_M2: Final = np.uint64(0x165667B19E3779F9)
_H1: Final = np.uint64(0x243F6A8885A308D3)
_H2: Final = np.uint64(0x13198A2E03707344)
_TEXT: Final = np.uint64(0xA4093822299F31D0)
_S1: Final = np.uint64(0xBF58476D1CE4E5B9)
_S2: Final = np.uint64(0x94D049BB133111EB)
_HEX2: Final = np.array(  # a byte to its two hex digits, as the bytes of a little-endian u16
    [ord(f"{b:02x}"[0]) | ord(f"{b:02x}"[1]) << 8 for b in range(256)], "<u2"
)


def _mix(h: U64) -> U64:
    """splitmix64's finaliser."""
    h = (h ^ (h >> np.uint64(30))) * _S1
    h = (h ^ (h >> np.uint64(27))) * _S2
    return h ^ (h >> np.uint64(31))


def text_digests(values: pl.Series) -> U64:
    """A 64-bit digest of each text (nulls give 0; callers skip them).

    The UTF-8 bytes, zero-padded to whole little-endian 8-byte words ``w``, go
    through ``h = mix((h ^ w) * 0xC2B2AE3D27D4EB4F)`` from ``h`` = the byte length
    xor 0xA4093822299F31D0 (``mix`` = splitmix64's finaliser).

    >>> [hex(d) for d in text_digests(pl.Series(["C1", "groceries"]))]
    ['0x680dec3dacf860b1', '0x6d851922361340c9']
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    arr = values.cast(pl.String).to_arrow().cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, n + 1, arr.offset * 8)
    base, end = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    starts = offsets[:-1] - base
    # the bytes plus 8 zero bytes, read as one unaligned little-endian word per offset
    padded = np.zeros(end - base + 8, np.uint8)
    if data_buf is not None and end > base:
        padded[: end - base] = np.frombuffer(data_buf, np.uint8, end - base, base)
    words = np.ndarray((end - base + 1,), "<u8", padded, 0, (1,))
    h = lengths.astype(np.uint64) ^ _TEXT
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    for j in range(int((lengths.max() + 7) // 8)):
        rest = lengths - 8 * j
        w = words[np.minimum(starts + 8 * j, end - base)]
        if (rest < 8).any():
            keep = np.clip(rest, 0, 7).astype(np.uint64) * np.uint64(8)
            mask = np.where(rest >= 8, ones, (np.uint64(1) << keep) - np.uint64(1))
            w = w & mask
        step = _mix((h ^ w) * _M1)
        h = step if (rest > 0).all() else np.where(rest > 0, step, h)
    if arr.null_count:
        h = np.where(values.is_null().to_numpy(), np.uint64(0), h)
    return h


def _words(values: pl.Series) -> U64:
    """One 64-bit word per value (see the module docstring)."""
    dtype = values.dtype
    if isinstance(dtype, pl.Enum):  # the digests of its few texts, gathered by code
        codes = values.to_physical().fill_null(0).to_numpy()
        digests: U64 = text_digests(pl.Series(dtype.categories))[codes]
        return digests
    if dtype == pl.String or dtype == pl.Categorical:
        return text_digests(values)
    if dtype == pl.UInt64:  # words already
        return values.fill_null(0).to_numpy()
    if dtype == pl.Boolean:
        return values.cast(pl.UInt8).fill_null(0).to_numpy().astype(np.uint64)
    if dtype.is_temporal():
        values = values.dt.cast_time_unit("us").to_physical() if dtype == pl.Datetime else values
    ints = values.to_physical().cast(pl.Int64).fill_null(0).to_numpy()
    return ints.view(np.uint64)


_CHUNK: Final = 1 << 14  # rows hashed at a time: the lanes and their scratch stay in cache


def hash_columns(columns: list[tuple[int, pl.Series | U64]], n: int) -> tuple[U64, U64]:
    """The two lanes of the rows of ``columns``: (position, values or their words).

    Words given directly are never null; a Series' nulls are skipped. Rows are
    folded a chunk at a time, in place (no temporaries the size of the batch)."""
    h1 = np.full(n, _H1, np.uint64)
    h2 = np.full(n, _H2, np.uint64)
    tagged: list[tuple[np.uint64, U64, npt.NDArray[np.bool_] | None]] = []
    for position, values in columns:
        if isinstance(values, pl.Series):
            nulls = values.null_count()
            if nulls == n:
                continue
            words = _words(values)
            live = values.is_not_null().to_numpy() if nulls else None
        else:
            words, live = values, None
        tagged.append((np.uint64((position + 1) * _TAG % 2**64), words, live))
    scratch = [np.empty(min(_CHUNK, n), np.uint64) for _ in range(4)]
    s32, s29 = np.uint64(32), np.uint64(29)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        x1, x2 = h1[lo:hi], h2[lo:hi]
        v, a, b, t = (s[: hi - lo] for s in scratch)
        for tag, words, live in tagged:
            np.bitwise_xor(words[lo:hi], tag, out=v)
            np.bitwise_xor(x1, v, out=a)
            np.multiply(a, _M1, out=a)
            np.right_shift(a, s32, out=t)
            np.bitwise_xor(a, t, out=a)
            np.bitwise_xor(x2, v, out=b)
            np.multiply(b, _M2, out=b)
            np.right_shift(b, s29, out=t)
            np.bitwise_xor(b, t, out=b)
            if live is None:
                x1[:], x2[:] = a, b
            else:
                np.copyto(x1, a, where=live[lo:hi])
                np.copyto(x2, b, where=live[lo:hi])
    return _mix(h1), _mix(h2)


def hex_id_array(lanes: tuple[U64, U64], prefix: str) -> pa.LargeStringArray:
    """``<prefix>-<32 hex digits>`` of both lanes (each big-endian), as Arrow text
    built in place: fixed-width values, so the offsets are a range."""
    h1, h2 = lanes
    n = len(h1)
    head = np.frombuffer((prefix + "-").encode(), np.uint8)
    width = len(head) + 32
    digest = np.empty((n, 2), ">u8")
    digest[:, 0], digest[:, 1] = h1, h2
    text = np.empty((n, width), np.uint8)
    text[:, : len(head)] = head
    text[:, len(head) :].view("<u2")[:] = _HEX2[digest.view(np.uint8).reshape(n, 16)]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(text.reshape(-1))
    )


def hex_ids(lanes: tuple[U64, U64], prefix: str, name: str = "event_id") -> pl.Series:
    """``<prefix>-<32 hex digits>`` of both lanes (each big-endian)."""
    return pl.Series(name, hex_id_array(lanes, prefix), pl.String)

"""Which partition a key goes to (stream._partition): the Java client's, always."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from stream._partition import KeyPartitioner

PARTITION_LISTS = st.lists(st.integers(0, 63), min_size=1, max_size=12, unique=True).map(sorted)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.binary(max_size=24), min_size=1, max_size=60), parts=PARTITION_LISTS)
def test_a_key_goes_where_the_default_partitioner_sends_it(
    keys: list[bytes], parts: list[int]
) -> None:
    ours, default = KeyPartitioner(kept=7), DefaultPartitioner()
    for key in keys + keys[::-1]:  # again: from the kept hashes (and after clearing them)
        assert ours(key, parts, parts) == default(key, parts, parts)
    fewer = parts[: max(1, len(parts) // 2)]  # the same keys, another partition count
    for key in keys:
        assert ours(key, fewer, fewer) == default(key, fewer, fewer)


def test_without_a_key_any_available_partition() -> None:
    ours = KeyPartitioner()
    picked = {ours(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert picked == {1, 3}
    assert {ours(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}

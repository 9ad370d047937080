"""Which partition a key goes to: the Java client's rule (murmur2 of the key), as
aiokafka's default partitioner has it, with each key's hash kept once worked out.

aiokafka's murmur2 is pure Python, about 5 µs a key: more than the rest of putting a
record in a batch. The worker sends a score per event of the same few customers, and
a replay sends each customer's events one after another.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka.partitioner import DefaultPartitioner, murmur2

__all__ = ["KeyPartitioner"]


class KeyPartitioner:
    """A drop-in for aiokafka's ``DefaultPartitioner`` (same partitions, by test),
    keeping the hashes of up to ``kept`` keys (a bank has millions of customers: the
    kept ones are dropped together when full)."""

    def __init__(self, kept: int = 1 << 17) -> None:
        self._kept = kept
        self._hash: dict[bytes, int] = {}
        self._any = DefaultPartitioner()

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:  # no key: any partition, as the default picks it
            return int(self._any(None, list(all_partitions), list(available)))
        h = self._hash.get(key)
        if h is None:
            if len(self._hash) >= self._kept:
                self._hash.clear()
            h = self._hash[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]

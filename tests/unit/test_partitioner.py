"""The stream services' producer partitioner: Kafka's own choice of partition for a key
(so that a service's outputs land where any other Kafka client would put them), with
each key's hash remembered."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from common.kafka import CachedKeyPartitioner


@given(st.lists(st.binary(max_size=40), max_size=50), st.sampled_from([1, 3, 4, 12, 50]))
def test_a_key_goes_where_kafkas_default_partitioner_sends_it(keys, count):
    cached, default = CachedKeyPartitioner(size=8), DefaultPartitioner()
    partitions = list(range(count))
    for key in keys + keys:  # the second time from memory (or after it started over)
        assert cached(key, partitions, partitions) == default(key, partitions, partitions)


def test_known_keys_land_on_the_java_clients_partitions():
    # murmur2 as org.apache.kafka.common.utils.Utils computes it (aiokafka's test vectors)
    partitioner = CachedKeyPartitioner()
    partitions = list(range(1000))
    assert partitioner(b"", partitions, partitions) == 681
    assert partitioner(b"a", partitions, partitions) == 524
    assert partitioner(b"ab", partitions, partitions) == 434
    assert partitioner(b"abc", partitions, partitions) == 107
    assert partitioner(b"123456789", partitions, partitions) == 566
    assert partitioner(b"\x00 ", partitions, partitions) == 742

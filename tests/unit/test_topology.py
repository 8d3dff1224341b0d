import uuid

import pytest

from provisio_lib.topology import Topology

pytestmark = pytest.mark.unit


def test_a_tenant_always_maps_to_the_same_partition_and_all_partitions_are_used():
    topo = Topology(prefix="p", partitions=8)
    tenants = [uuid.uuid4() for _ in range(400)]
    assert all(topo.partition_of(t) == topo.partition_of(str(t)) for t in tenants)
    assert {topo.partition_of(t) for t in tenants} == set(range(8))


def test_a_partitions_streams_share_one_cluster_hash_tag():
    topo = Topology(prefix="p", partitions=4)
    t = uuid.uuid4()
    names = [topo.command_stream_for(t), topo.audit_stream_for(t), topo.dead_letter_stream_for(t)]
    tags = {n[n.index("{") + 1 : n.index("}")] for n in names}
    assert tags == {f"p{topo.partition_of(t)}"}
    assert len({topo.command_stream(p) for p in range(4)}) == 4


def test_partition_out_of_range_is_refused():
    with pytest.raises(ValueError):
        Topology(partitions=2).command_stream(2)

"""Weight resolution of the TensorFlow neighbor ops (bluefog.tensorflow.
neighbor_weights), framework-neutral and without MPI: a fake basics object
stands in for the process's rank and topology."""
import networkx as nx
import pytest

from bluefog.common import topology_util
from bluefog.common import neighbor_weights as nw


class FakeBasics:
    def __init__(self, rank, topology, weighted=False, local_size=1, machine_topology=None, homogeneous=True,
                 machine_weighted=False):
        self._rank, self._topo, self._weighted = rank, topology, weighted
        self._local, self._mtopo, self._homo, self._mweighted = local_size, machine_topology, homogeneous, \
            machine_weighted

    def rank(self): return self._rank
    def load_topology(self): return self._topo
    def topology_in_use(self): return self._topo
    def is_topo_weighted(self): return self._weighted
    def in_neighbor_ranks(self): return [r for r in self._topo.predecessors(self._rank) if r != self._rank]
    def out_neighbor_ranks(self): return [r for r in self._topo.successors(self._rank) if r != self._rank]
    def is_homogeneous(self): return self._homo
    def local_size(self): return self._local
    def local_rank(self): return self._rank % self._local
    def machine_rank(self): return self._rank // self._local
    def machine_size(self): return self._topo.number_of_nodes() // self._local
    def load_machine_topology(self): return self._mtopo
    def is_machine_topo_weighted(self): return self._mweighted
    def in_neighbor_machine_ranks(self):
        return [m for m in self._mtopo.predecessors(self.machine_rank()) if m != self.machine_rank()]
    def out_neighbor_machine_ranks(self):
        return [m for m in self._mtopo.successors(self.machine_rank()) if m != self.machine_rank()]


def test_uniform_default():
    basics = FakeBasics(0, topology_util.ExponentialGraph(4))
    ex = nw.resolve(basics, "op")
    assert ex.src_ranks == [2, 3] and ex.dst_ranks == [1, 2]
    assert ex.self_weight == pytest.approx(1 / 3) and ex.src_weights == pytest.approx([1 / 3, 1 / 3])
    assert ex.dst_weights == []


def test_weighted_topology_uses_receive_weights():
    g = nx.DiGraph()
    g.add_edge(0, 0, weight=0.7)
    g.add_edge(1, 0, weight=0.3)
    g.add_edge(1, 1, weight=1.0)
    ex = nw.resolve(FakeBasics(0, g, weighted=True), "op")
    assert ex.self_weight == pytest.approx(0.7) and ex.src_ranks == [1] and ex.src_weights == [pytest.approx(0.3)]


def test_explicit_static_weights_and_missing_sources_get_zero():
    basics = FakeBasics(0, topology_util.ExponentialGraph(4))
    ex = nw.resolve(basics, "op", self_weight=0.5, src_weights={3: 0.5})
    assert ex.src_ranks == [2, 3] and ex.src_weights == [0.0, 0.5]
    with pytest.raises(ValueError, match="not in-neighbors"):
        nw.resolve(basics, "op", self_weight=0.5, src_weights={1: 0.5})
    with pytest.raises(ValueError, match="together"):
        nw.resolve(basics, "op", self_weight=0.5)


def test_dynamic_exchange_sorted_and_list_dst():
    basics = FakeBasics(1, topology_util.RingGraph(4))
    ex = nw.resolve(basics, "op", self_weight=0.2, src_weights={3: 0.3, 0: 0.5}, dst_weights={2: 0.5, 0: 2.0})
    assert ex.src_ranks == [0, 3] and ex.src_weights == [0.5, 0.3]
    assert ex.dst_ranks == [0, 2] and ex.dst_weights == [2.0, 0.5]
    ex = nw.resolve(basics, "op", self_weight=1.0, src_weights={}, dst_weights=[3, 2])
    assert ex.dst_ranks == [2, 3] and ex.dst_weights == [1.0, 1.0]
    with pytest.raises(ValueError, match="required"):
        nw.resolve(basics, "op", dst_weights=[2])
    for bad in (["a"], [1.7], [True]):  # 1.7 used to become rank 1 silently
        with pytest.raises(ValueError, match="dst_weights must be a list of ranks"):
            nw.resolve(basics, "op", self_weight=1.0, src_weights={}, dst_weights=bad)


@pytest.mark.parametrize("bad", [{"a": 1.0}, {1: "x"}, {True: 1.0}, [0.5]])
def test_bad_weight_types(bad):
    basics = FakeBasics(0, topology_util.ExponentialGraph(4))
    with pytest.raises(ValueError):
        nw.resolve(basics, "op", self_weight=0.5, src_weights=bad)


def test_check_ranks():
    assert nw.check_ranks((1, 2), "src_ranks", "op") == [1, 2]
    for bad in ([1.5], [True], "12", None):
        with pytest.raises(ValueError):
            nw.check_ranks(bad, "src_ranks", "op")


def test_machine_exchange_leaders_and_others():
    mtopo = topology_util.RingGraph(3)
    leader = FakeBasics(2, topology_util.ExponentialGraph(6), local_size=2, machine_topology=mtopo)
    ex = nw.resolve_machines(leader, "op")
    # machine 1's leader (rank 2) hears from machines 0 and 2, i.e. ranks 0 and 4.
    assert ex.src_ranks == [0, 4] and ex.dst_ranks == [0, 4]
    assert ex.self_weight == pytest.approx(1 / 3) and ex.src_weights == pytest.approx([1 / 3, 1 / 3])
    other = FakeBasics(3, topology_util.ExponentialGraph(6), local_size=2, machine_topology=mtopo)
    assert nw.resolve_machines(other, "op") == nw.Exchange(0.0, [], [], [], [])
    ex = nw.resolve_machines(leader, "op", self_weight=0.5, src_machine_weights={0: 0.5},
                             dst_machine_weights={2: 1.5})
    assert ex.src_ranks == [0] and ex.dst_ranks == [4] and ex.dst_weights == [1.5]


def test_machine_exchange_errors():
    g = topology_util.ExponentialGraph(4)
    with pytest.raises(ValueError, match="homogeneous"):
        nw.resolve_machines(FakeBasics(0, g, local_size=2, homogeneous=False), "op")
    with pytest.raises(RuntimeError, match="machine topology"):
        nw.resolve_machines(FakeBasics(0, g, local_size=2), "op")
    with pytest.raises(ValueError, match="together"):
        nw.resolve_machines(FakeBasics(0, g, local_size=2), "op", self_weight=0.5)
    # bad machine ids are refused on every rank, not only on the leaders that use them
    for rank in (0, 1, 3):  # leader of machine 0, the other rank of machine 0, of machine 1
        basics = FakeBasics(rank, g, local_size=2)
        for src, dst, says in (({5: 0.5}, [1 - rank // 2], "src_machine_weights names machine 5; machines are 0..1"),
                               ({1 - rank // 2: 0.5}, [-1], "dst_machine_weights names machine -1"),
                               ({rank // 2: 0.5}, [1 - rank // 2], "own machine")):
            with pytest.raises(ValueError, match=says):
                nw.resolve_machines(basics, "op", self_weight=0.5, src_machine_weights=src, dst_machine_weights=dst)

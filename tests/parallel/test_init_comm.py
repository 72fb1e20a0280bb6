"""bf.init(comm=...) on an mpi4py sub-communicator.

A process initializes BlueFog once, so this lives in its own file (each file
runs in fresh processes). COMM_WORLD is split into even and odd ranks; each
half runs its own BlueFog job. mpi4py is used only before bf.init(), so MPI is
never called from two threads at once.
"""
import pytest
import torch
from mpi4py import MPI

import bluefog.torch as bf

WORLD = MPI.COMM_WORLD
WORLD_RANK = WORLD.Get_rank()
WORLD_SIZE = WORLD.Get_size()
COLOR = WORLD_RANK % 2
SUB = WORLD.Split(color=COLOR, key=WORLD_RANK)
SUB_SIZE = SUB.Get_size()
SUB_RANK = SUB.Get_rank()
MY_HALF = [r for r in range(WORLD_SIZE) if r % 2 == COLOR]  # world ranks in my half, in sub-rank order

bf.init(comm=SUB)


@pytest.fixture(autouse=True)
def _reinit():
    bf.init(comm=SUB)  # a later init is a no-op for the communicator
    yield


def test_size_and_rank_follow_the_sub_communicator():
    assert SUB_SIZE == len(MY_HALF)
    assert bf.size() == SUB_SIZE
    assert bf.rank() == SUB_RANK
    assert MY_HALF[bf.rank()] == WORLD_RANK
    assert bf.load_topology().number_of_nodes() == SUB_SIZE


def test_allreduce_sums_over_my_half_only():
    x = torch.tensor([float(WORLD_RANK), 1.0, 2.0 ** WORLD_RANK], dtype=torch.float64)
    out = bf.allreduce(x, average=False, name="half.sum")
    expected = torch.tensor([float(sum(MY_HALF)), float(len(MY_HALF)), float(sum(2.0 ** r for r in MY_HALF))],
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    avg = bf.allreduce(x, average=True, name="half.avg")
    torch.testing.assert_close(avg, expected / len(MY_HALF))


def test_allgather_and_broadcast_within_my_half():
    x = torch.tensor([[WORLD_RANK, COLOR]], dtype=torch.int64)
    gathered = bf.allgather(x, name="half.gather")
    assert gathered.tolist() == [[r, COLOR] for r in MY_HALF]
    for root in range(SUB_SIZE):
        out = bf.broadcast(torch.tensor([WORLD_RANK], dtype=torch.int32), root, name=f"half.bc.{root}")
        assert out.tolist() == [MY_HALF[root]]


def test_root_outside_the_sub_communicator_is_rejected():
    # A root that exists in COMM_WORLD but not in the half.
    with pytest.raises(ValueError, match="root"):
        bf.broadcast(torch.ones(2), SUB_SIZE, name="half.badroot")
    torch.testing.assert_close(bf.allreduce(torch.ones(2), average=False, name="half.after"),
                               torch.full((2,), float(SUB_SIZE)))

"""InferSourceFromDestinationRanks / InferDestinationFromSourceRanks (collective)."""
import numpy as np
import pytest

import bluefog.torch as bf

bf.init()


def _ring_dst(rank, size):
    return [] if size == 1 else [(rank + 1) % size]


def test_infer_sources_of_a_ring():
    size, rank = bf.size(), bf.rank()
    src = bf.InferSourceFromDestinationRanks(_ring_dst(rank, size))
    assert src == ([] if size == 1 else [(rank - 1) % size])


def test_infer_destinations_of_a_ring():
    size, rank = bf.size(), bf.rank()
    src = [] if size == 1 else [(rank - 1) % size]
    assert bf.InferDestinationFromSourceRanks(src) == _ring_dst(rank, size)


def test_adjacency_matrix_is_column_normalized():
    size, rank = bf.size(), bf.rank()
    # Rank r sends to every higher rank.
    dst = list(range(rank + 1, size))
    src, W = bf.InferSourceFromDestinationRanks(dst, construct_adjacency_matrix=True)
    assert src == list(range(rank))
    expected = np.triu(np.ones((size, size)))
    expected /= expected.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(W, expected)
    dst2, W2 = bf.InferDestinationFromSourceRanks(list(range(rank)), construct_adjacency_matrix=True)
    assert dst2 == dst
    np.testing.assert_allclose(W2, expected)


def test_bad_ranks_raise_before_any_communication():
    size, rank = bf.size(), bf.rank()
    with pytest.raises(ValueError, match="itself"):
        bf.InferSourceFromDestinationRanks([rank])
    with pytest.raises(ValueError, match="out of range"):
        bf.InferSourceFromDestinationRanks([size])
    with pytest.raises(ValueError, match="int"):
        bf.InferDestinationFromSourceRanks(["0"])
    if size > 2:
        other = (rank + 1) % size
        with pytest.raises(ValueError, match="duplicates"):
            bf.InferSourceFromDestinationRanks([other, other])


@pytest.mark.parametrize("infer", [bf.InferSourceFromDestinationRanks, bf.InferDestinationFromSourceRanks],
                         ids=["src", "dst"])
def test_bad_ranks_on_one_rank_fail_every_rank(infer):
    """Rank 0 refuses its own list; the others, whose lists are good, get the
    error too instead of waiting in the collective forever. The next call works."""
    size, rank = bf.size(), bf.rank()
    if size == 1:
        pytest.skip("needs a rank whose input is good")
    with pytest.raises(ValueError) as info:
        infer([rank] if rank == 0 else _ring_dst(rank, size))
    assert "itself" in str(info.value)
    if rank != 0:
        assert "refused on rank 0" in str(info.value)
    assert len(infer(_ring_dst(rank, size))) == 1

"""Collective topology helpers (they use bf.allgather): infer one side of a
dynamic send/receive pattern from the other."""
from typing import List, Tuple, Union

import numpy as np
import torch

from bluefog.torch.mpi_ops import allgather
from bluefog.common.basics import get_basics

_basics = get_basics()


def _check_ranks(ranks, what: str, func: str) -> List[int]:
    size, me = _basics.size(), _basics.rank()
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise ValueError(f"{func}: {what} must hold ranks (int), got {r!r}")
        if not 0 <= int(r) < size:
            raise ValueError(f"{func}: rank {r} in {what} is out of range [0, {size})")
        if int(r) == me:
            raise ValueError(f"{func}: {what} must not contain this rank ({me}) itself")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise ValueError(f"{func}: {what} contains duplicates: {out}")
    return out


# Calls per function: each call's ops get their own names (the same on every
# rank, since every rank makes the same calls), so a call right after one that
# a rank refused never meets that refusal's name still in flight.
_calls = {}


def _gather_lists(ranks, what: str, func: str, name: str) -> List[List[int]]:
    """Every rank's checked list of ranks. A list this rank refuses fails the
    collective on every rank (the others would wait in it forever)."""
    n = _calls[name] = _calls.get(name, -1) + 1
    name = f"{name}.{n}"
    with _basics.refusal_reported("allgather", name + ".degree"):
        ranks = _check_ranks(ranks, what, func)
    size = _basics.size()
    degrees = allgather(torch.tensor([len(ranks)], dtype=torch.int64), name=name + ".degree").tolist()
    flat = allgather(torch.tensor(ranks, dtype=torch.int64), name=name + ".ranks").tolist()
    lists, offset = [], 0
    for r in range(size):
        lists.append(flat[offset:offset + degrees[r]])
        offset += degrees[r]
    return lists


def _column_normalized(edges: List[Tuple[int, int]]) -> np.ndarray:
    size = _basics.size()
    W = np.eye(size)
    for i, j in edges:
        W[i, j] = 1.0
    return W / W.sum(axis=0, keepdims=True)


def InferSourceFromDestinationRanks(dst_ranks: List[int], construct_adjacency_matrix: bool = False
                                    ) -> Union[List[int], Tuple[List[int], np.ndarray]]:
    """Collective. Given each rank's destinations, returns the ranks that send to
    this rank (sorted). With construct_adjacency_matrix=True also returns W, the
    adjacency matrix with self-loops (W[i][j] != 0 iff i sends to j or i == j),
    normalized so that every column sums to 1."""
    lists = _gather_lists(dst_ranks, "dst_ranks", "InferSourceFromDestinationRanks", "bluefog.infer_src")
    me = _basics.rank()
    sources = sorted(r for r, lst in enumerate(lists) if me in lst)
    if not construct_adjacency_matrix:
        return sources
    return sources, _column_normalized([(i, j) for i, lst in enumerate(lists) for j in lst])


def InferDestinationFromSourceRanks(src_ranks: List[int], construct_adjacency_matrix: bool = False
                                    ) -> Union[List[int], Tuple[List[int], np.ndarray]]:
    """Collective. Given each rank's sources, returns the ranks this rank sends to
    (sorted); with construct_adjacency_matrix=True also W as in
    InferSourceFromDestinationRanks."""
    lists = _gather_lists(src_ranks, "src_ranks", "InferDestinationFromSourceRanks", "bluefog.infer_dst")
    me = _basics.rank()
    destinations = sorted(r for r, lst in enumerate(lists) if me in lst)
    if not construct_adjacency_matrix:
        return destinations
    return destinations, _column_normalized([(i, j) for j, lst in enumerate(lists) for i in lst])

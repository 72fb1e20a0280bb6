"""Framework-neutral weight resolution for neighbor ops: which ranks a rank
receives from and sends to, and with which weights.

Pure Python over a basics object (rank, neighbor lists, topology); no tensors,
so it is unit-testable without MPI. Both frontends' neighbor ops use it
(uniform 1/(in-degree+1), the topology's receive weights when it is weighted,
or explicit weights; dst_weights makes the exchange dynamic).
"""
import numbers
from typing import Dict, List, NamedTuple

from bluefog.common import topology_util


class Exchange(NamedTuple):
    """A resolved neighbor exchange.

    The result on this rank is self_weight * x + sum_k src_weights[k] * r_k where
    r_k is what src_ranks[k] sent; this rank sends its tensor to dst_ranks[i]
    scaled by dst_weights[i] (an empty dst_weights means 1 for everyone)."""
    self_weight: float
    src_ranks: List[int]
    src_weights: List[float]
    dst_ranks: List[int]
    dst_weights: List[float]


def check_weight(value, what: str, op: str) -> float:
    """A real number as float, else ValueError."""
    if type(value) is float or type(value) is int:  # the common case, without ABC checks
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{op}: {what} must be a number, got {value!r}")
    return float(value)


def check_weight_dict(weights, what: str, op: str) -> Dict[int, float]:
    """{rank: weight} with int keys and real values, else ValueError."""
    if not isinstance(weights, dict):
        raise ValueError(f"{op}: {what} must be a dict {{rank: weight}}, got {type(weights).__name__}")
    out = {}
    for k, v in weights.items():
        if type(k) is not int and (isinstance(k, bool) or not isinstance(k, numbers.Integral)):
            raise ValueError(f"{op}: {what} keys must be ranks (int), got {k!r}")
        # Plain ints and floats (the common case) without building a message.
        out[int(k)] = float(v) if type(v) is float or type(v) is int else check_weight(v, f"{what}[{k}]", op)
    return out


def dst_dict(dst_weights, op: str) -> Dict[int, float]:
    """dst_weights as {rank: weight}; a list of ranks means weight 1 each."""
    if isinstance(dst_weights, (list, tuple)):
        return {r: 1.0 for r in check_ranks(dst_weights, "dst_weights", op)}
    return check_weight_dict(dst_weights, "dst_weights", op)


def check_root(root_rank, op: str) -> int:
    """A root rank as a Python int (numpy integers accepted, as in 0.3); else ValueError."""
    if isinstance(root_rank, bool) or not isinstance(root_rank, numbers.Integral):
        raise ValueError(f"{op}: root_rank must be an int, got {root_rank!r}")
    return int(root_rank)


def check_ranks(ranks, what: str, op: str) -> List[int]:
    """A list of int ranks, else ValueError."""
    if not isinstance(ranks, (list, tuple)) or not all(
            isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in ranks):
        raise ValueError(f"{op}: {what} must be a list of ranks (int), got {ranks!r}")
    return [int(r) for r in ranks]


def resolve(basics, op: str, self_weight=None, src_weights=None, dst_weights=None) -> Exchange:
    """The exchange of a neighbor_allreduce on this rank.

    No weights: the topology's receive weights if it is weighted, else uniform
    1/(in-degree + 1). self_weight and src_weights alone: explicit weights over
    the static topology (src_weights keys must be in-neighbors). With
    dst_weights (dict rank -> weight, or a list meaning 1): a dynamic exchange
    receiving from src_weights' keys, which then are required.
    """
    if dst_weights is None and self_weight is None and src_weights is None:
        # The static default depends on the topology alone: derive it once per set_topology.
        cached = getattr(basics, "topology_cached", None)
        if cached is not None:
            return cached(("default-exchange", op), lambda: _resolve(basics, op, None, None, None))
    return _resolve(basics, op, self_weight, src_weights, dst_weights)


def _resolve(basics, op, self_weight, src_weights, dst_weights) -> Exchange:
    if dst_weights is None:
        # Static: over the topology's neighbors (a dynamic exchange never needs them).
        rank = basics.rank()
        in_nbrs = list(basics.in_neighbor_ranks())
        out_nbrs = list(basics.out_neighbor_ranks())
        if self_weight is None and src_weights is None:
            if basics.is_topo_weighted():
                self_weight, src_weights = topology_util.GetRecvWeights(basics.topology_in_use(), rank)
            else:
                uniform = 1.0 / (len(in_nbrs) + 1)
                self_weight, src_weights = uniform, {r: uniform for r in in_nbrs}
        elif self_weight is None or src_weights is None:
            raise ValueError(f"{op}: give self_weight and src_weights together (or neither, for the topology's "
                             "weights)")
        self_weight = check_weight(self_weight, "self_weight", op)
        src = check_weight_dict(src_weights, "src_weights", op)
        stray = sorted(set(src) - set(in_nbrs))
        if stray:
            raise ValueError(f"{op}: src_weights names ranks {stray} that are not in-neighbors of rank {rank} "
                             f"(in-neighbors: {in_nbrs}); pass dst_weights for a dynamic exchange")
        return Exchange(self_weight, in_nbrs, [src.get(r, 0.0) for r in in_nbrs], out_nbrs, [])
    if self_weight is None or src_weights is None:
        raise ValueError(f"{op}: with dst_weights (a dynamic exchange) self_weight and src_weights are required")
    self_weight = check_weight(self_weight, "self_weight", op)
    src = check_weight_dict(src_weights, "src_weights", op)
    dst = dst_dict(dst_weights, op)
    src_order, dst_order = sorted(src), sorted(dst)
    return Exchange(self_weight, src_order, [src[r] for r in src_order], dst_order, [dst[d] for d in dst_order])


def _check_machines(basics, machines, what: str, op: str) -> None:
    """Machine ids in [0, machine_size()), other than this rank's machine."""
    count, mine = basics.machine_size(), basics.machine_rank()
    for m in machines:
        if not 0 <= m < count:
            raise ValueError(f"{op}: {what} names machine {m}; machines are 0..{count - 1}")
        if m == mine:
            raise ValueError(f"{op}: {what} names this rank's own machine {m} (its weight is self_weight)")


def resolve_machines(basics, op: str, self_weight=None, src_machine_weights=None,
                     dst_machine_weights=None) -> Exchange:
    """The leaders' exchange of a hierarchical_neighbor_allreduce, in global
    ranks (machine m's leader is rank m * local_size()). Non-leaders get an
    empty exchange with self_weight 0 (their share arrives via the machine).
    Weights: all three given, or none (the machine topology's weights, or
    uniform over in-neighbor machines)."""
    if not basics.is_homogeneous():
        raise ValueError(f"{op}: needs a homogeneous cluster (every machine with the same number of consecutive "
                         "ranks)")
    given = [w is not None for w in (self_weight, src_machine_weights, dst_machine_weights)]
    if any(given) and not all(given):
        raise ValueError(f"{op}: give self_weight, src_machine_weights and dst_machine_weights together")
    if not any(given):
        topo = basics.load_machine_topology()
        if topo is None:
            raise RuntimeError(f"{op}: no machine topology is set; call set_machine_topology() or pass weights")
        ins, outs = basics.in_neighbor_machine_ranks(), basics.out_neighbor_machine_ranks()
        if basics.is_machine_topo_weighted():
            self_weight, src_machine_weights = topology_util.GetRecvWeights(topo, basics.machine_rank())
        else:
            uniform = 1.0 / (len(ins) + 1)
            self_weight, src_machine_weights = uniform, {m: uniform for m in ins}
        dst = {m: 1.0 for m in outs}
    else:
        self_weight = check_weight(self_weight, "self_weight", op)
        src_machine_weights = check_weight_dict(src_machine_weights, "src_machine_weights", op)
        dst = dst_dict(dst_machine_weights, op)
        # On every rank, though only the leaders use them: a bad machine id on
        # another rank of the machine is a mistake all the same.
        _check_machines(basics, src_machine_weights, "src_machine_weights", op)
        _check_machines(basics, dst, "dst_machine_weights", op)
    if basics.local_rank() != 0:
        return Exchange(0.0, [], [], [], [])
    local = basics.local_size()
    src_order, dst_order = sorted(src_machine_weights), sorted(dst)
    return Exchange(float(self_weight), [m * local for m in src_order],
                    [float(src_machine_weights[m]) for m in src_order],
                    [m * local for m in dst_order], [float(dst[m]) for m in dst_order])

"""Average consensus: every rank holds a random vector; by talking only to their
neighbors the ranks all converge to the average of the vectors.

Synchronous mode: x <- self_weight * x + sum_j w_j * x_j with bf.neighbor_allreduce
on a static virtual topology, or (--enable-dynamic-topology) with one peer per
iteration. Asynchronous mode (--asynchronous-mode): push-sum over one-sided
windows (win_create with zero_init, win_accumulate, win_update_then_collect and
the associated p), with no synchronization between the ranks until the end.

    bfrun -np 4 python examples/pytorch_average_consensus.py
    bfrun -np 4 python examples/pytorch_average_consensus.py --virtual-topology ring --enable-dynamic-topology
    bfrun -np 4 python examples/pytorch_average_consensus.py --asynchronous-mode --save-plot-file consensus.png

Each rank prints its final relative error ||x - x_bar|| / ||x_bar||, and rank 0
prints the largest one as "final relative error (max over ranks): ...".
"""
import argparse

import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from plotting import semilogy_curve  # examples/plotting.py (the script's folder is on sys.path)

TOPOLOGIES = ["expo2", "ring", "mesh", "star", "InnerOuterExpo2"]


def parse_args():
    parser = argparse.ArgumentParser(description="BlueFog average consensus",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-size", type=int, default=100000, help="length of each rank's vector")
    parser.add_argument("--max-iters", type=int, default=200)
    parser.add_argument("--virtual-topology", type=str, default="expo2", choices=TOPOLOGIES,
                        help="static topology (InnerOuterExpo2 is a dynamic one-peer schedule on the "
                             "exponential graph, used with --enable-dynamic-topology)")
    parser.add_argument("--enable-dynamic-topology", action="store_true", default=False,
                        help="talk to one peer per iteration")
    parser.add_argument("--asynchronous-mode", action="store_true", default=False,
                        help="push-sum with one-sided window ops")
    parser.add_argument("--no-cuda", action="store_true", default=False, help="stay on the CPU")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--plot-interactive", action="store_true", default=False)
    parser.add_argument("--save-plot-file", type=str, default="", help="save the error curve to this file")
    return parser.parse_args()


def set_virtual_topology(name):
    size = bf.size()
    if name in ("expo2", "InnerOuterExpo2"):
        bf.set_topology(topology_util.ExponentialGraph(size))
    elif name == "ring":
        bf.set_topology(topology_util.RingGraph(size), is_weighted=True)
    elif name == "mesh":
        bf.set_topology(topology_util.MeshGrid2DGraph(size), is_weighted=True)
    elif name == "star":
        bf.set_topology(topology_util.StarGraph(size), is_weighted=True)


def dynamic_schedule(name):
    """An infinite generator of ([send ranks], [recv ranks]), one peer per step."""
    if name == "InnerOuterExpo2":
        if bf.is_homogeneous() and bf.local_size() > 2 and bf.machine_size() > 1:
            return topology_util.GetInnerOuterExpo2DynamicSendRecvRanks(bf.size(), bf.local_size(), bf.rank())
        if bf.rank() == 0:
            print("InnerOuterExpo2 needs several machines with more than 2 ranks each; using the one-peer "
                  "exponential schedule instead", flush=True)
    if not one_peer_steps_are_permutations(bf.load_topology()):
        # With 1/(in-degree + 1) weights a step is doubly stochastic only when every
        # rank receives from exactly one peer: on a star or a mesh some receive from
        # several and some from none, and the ranks agree on a value that is not the
        # average.
        if bf.rank() == 0:
            print(f"on {name}, the one-peer schedule does not pair every rank with exactly one sender "
                  "at each step (needed to keep the average); using the exponential graph's schedule "
                  "instead", flush=True)
        return topology_util.GetDynamicOnePeerSendRecvRanks(topology_util.ExponentialGraph(bf.size()), bf.rank())
    return topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())


def one_peer_steps_are_permutations(topology, steps=None):
    """True if, at each step of GetDynamicOnePeerSendRecvRanks (computed here for
    every rank), every rank receives from exactly one peer."""
    size = topology.number_of_nodes()
    schedules = [topology_util.GetDynamicOnePeerSendRecvRanks(topology, r) for r in range(size)]
    for _ in range(steps or 2 * size):
        if any(len(recv) != 1 for _, recv in (next(s) for s in schedules)):
            return False
    return True


def relative_error(x, x_bar):
    return (torch.norm(x - x_bar) / torch.norm(x_bar)).item()


def synchronous(x, x_bar, args):
    errors = []
    dynamic = args.enable_dynamic_topology and bf.size() > 1
    schedule = dynamic_schedule(args.virtual_topology) if dynamic else None
    for _ in range(args.max_iters):
        if dynamic:
            send, recv = next(schedule)
            w = 1.0 / (len(recv) + 1)
            x = bf.neighbor_allreduce(x, self_weight=w, src_weights={r: w for r in recv},
                                      dst_weights={r: 1.0 for r in send}, name="x")
        else:
            x = bf.neighbor_allreduce(x, name="x")  # the topology's (or uniform) weights
        errors.append(relative_error(x, x_bar))
    return x, errors


def asynchronous(x, x_bar, args):
    """Push-sum: each rank keeps (x, p), adds shares of both into its out-neighbors'
    buffers, and collects what arrived; x / p tends to the average."""
    outs = bf.out_neighbor_ranks()
    bf.turn_on_win_ops_with_associated_p()
    bf.win_create(x, name="x", zero_init=True)
    errors = []
    for i in range(args.max_iters):
        if args.enable_dynamic_topology and outs:
            dst_weights, self_weight = {outs[i % len(outs)]: 0.5}, 0.5
        else:
            self_weight = 1.0 / (len(outs) + 1)
            dst_weights = {r: self_weight for r in outs}
        bf.win_accumulate(x, name="x", self_weight=self_weight, dst_weights=dst_weights, require_mutex=True)
        bf.win_update_then_collect(name="x")
        errors.append(relative_error(x / bf.win_associated_p(name="x"), x_bar))
    # Let every rank's last accumulate land, then collect it.
    bf.barrier()
    bf.win_update_then_collect(name="x")
    p = bf.win_associated_p(name="x")
    result = x / p
    bf.win_free(name="x")
    bf.turn_off_win_ops_with_associated_p()
    print(f"rank {bf.rank()}: associated p {p:.6f}", flush=True)
    return result, errors


def plot(errors, args):
    title = (("push-sum" if args.asynchronous_mode else "neighbor_allreduce")
             + f", {args.virtual_topology}" + (", dynamic" if args.enable_dynamic_topology else ""))
    semilogy_curve(errors, "relative error on rank 0", title, args.save_plot_file, args.plot_interactive)


def main():
    args = parse_args()
    bf.init()
    set_virtual_topology(args.virtual_topology)
    device = "cpu"
    if not args.no_cuda and torch.cuda.is_available():
        # One GPU per rank of this machine (ranks beyond the GPU count share them).
        torch.cuda.set_device(bf.local_rank() % torch.cuda.device_count())
        device = "cuda"
    torch.manual_seed(args.seed + bf.rank())
    x = torch.randn(args.data_size, device=device, dtype=torch.double)
    x_bar = bf.allreduce(x, average=True, name="x_bar")

    if args.asynchronous_mode:
        x, errors = asynchronous(x, x_bar, args)
    else:
        x, errors = synchronous(x, x_bar, args)

    final = relative_error(x, x_bar)
    print(f"rank {bf.rank()}: relative error at the last iteration {final:.3e}", flush=True)
    worst = bf.allgather(torch.tensor([final], dtype=torch.double), name="errors").max().item()
    if bf.rank() == 0:
        print(f"final relative error (max over ranks): {worst:.3e}", flush=True)
        if args.save_plot_file or args.plot_interactive:
            plot(errors, args)


if __name__ == "__main__":
    main()

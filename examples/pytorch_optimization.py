"""Decentralized optimization: linear or logistic regression where every rank
holds its own data, and the ranks minimize the average of their losses by
talking only to their neighbors.

    f(w) = 1/n sum_r f_r(w),  f_r(w) = 1/m sum_i loss(x_ri, y_ri; w) + rho/2 ||w||^2

The local data differ from rank to rank (heterogeneous), so the local minimizers
differ from the global one. Methods (--method):

  diffusion          adapt-then-combine: w <- W (w - lr grad f_r(w)); converges to
                     a neighborhood of the solution whose size grows with lr
  exact_diffusion    diffusion plus a correction (W_bar = (I + W) / 2): exact
  gradient_tracking  w <- W w - lr q, q <- W q + grad f_r(w_new) - grad f_r(w): exact
  push_diging        gradient tracking with push-sum over one-sided windows
                     (win_accumulate / win_update_then_collect): exact on directed
                     graphs with column-stochastic weights

The centralized solution is computed first, to machine precision, by Newton's
method where the gradients and Hessians are averaged over the ranks with
bf.allreduce. Rank 0 prints the distance of every rank's final iterate to it:

    bfrun -np 4 python examples/pytorch_optimization.py --method exact_diffusion
    bfrun -np 4 python examples/pytorch_optimization.py --task logistic_regression --method gradient_tracking
    bfrun -np 4 python examples/pytorch_optimization.py --method push_diging --topology expo2
"""
import argparse
import contextlib
import os

import torch

import bluefog.torch as bf
from bluefog.common import topology_util
from plotting import semilogy_curve  # examples/plotting.py (the script's folder is on sys.path)

METHODS = ["diffusion", "exact_diffusion", "gradient_tracking", "push_diging"]
TASKS = ["linear_regression", "logistic_regression"]
TOPOLOGIES = ["mesh", "star", "ring", "expo2"]
DEFAULT_LR = {"linear_regression": 0.1, "logistic_regression": 1.0}


def parse_args():
    parser = argparse.ArgumentParser(description="BlueFog decentralized linear / logistic regression",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", type=str, default="linear_regression", choices=TASKS)
    parser.add_argument("--method", type=str, default="exact_diffusion", choices=METHODS)
    parser.add_argument("--topology", type=str, default="mesh", choices=TOPOLOGIES)
    parser.add_argument("--lr", type=float, default=None,
                        help="step size (default: %s)" % DEFAULT_LR)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--data-size", type=int, default=200, help="samples per rank")
    parser.add_argument("--dim", type=int, default=10, help="number of features")
    parser.add_argument("--rho", type=float, default=1e-2, help="l2 regularization")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--plot-interactive", action="store_true", default=False)
    parser.add_argument("--save-plot-file", type=str, default="",
                        help="save rank 0's distance to the solution per iteration to this file")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = DEFAULT_LR[args.task]
    return args


# ---- the problem ----------------------------------------------------------------------------
def make_data(args):
    """Every rank its own samples; a shared ground truth, but rank-dependent
    feature scales and label noise make the local problems differ."""
    g = torch.Generator().manual_seed(args.seed)
    w_true = torch.randn(args.dim, 1, generator=g, dtype=torch.double)
    g = torch.Generator().manual_seed(args.seed + 1 + bf.rank())
    scale = 1.0 + 0.5 * bf.rank() / max(bf.size() - 1, 1)
    X = scale * torch.randn(args.data_size, args.dim, generator=g, dtype=torch.double)
    if args.task == "linear_regression":
        y = X @ w_true + 0.5 * torch.randn(args.data_size, 1, generator=g, dtype=torch.double)
    else:
        logits = X @ w_true + torch.randn(args.data_size, 1, generator=g, dtype=torch.double)
        y = torch.where(logits > 0, 1.0, -1.0).to(torch.double)
    return X, y


def local_loss(w, X, y, args):
    if args.task == "linear_regression":
        data = 0.5 * torch.mean((X @ w - y) ** 2)
    else:
        data = torch.mean(torch.nn.functional.softplus(-y * (X @ w)))  # log(1 + exp(-y x'w))
    return data + 0.5 * args.rho * torch.sum(w * w)


def local_grad(w, X, y, args):
    """The gradient of this rank's loss, by autograd."""
    w = w.detach().requires_grad_(True)
    with timeline("gradient"):
        local_loss(w, X, y, args).backward()
    return w.grad.detach()


@contextlib.contextmanager
def timeline(activity):
    """A timeline activity when BLUEFOG_TIMELINE is set (chrome://tracing)."""
    if os.environ.get("BLUEFOG_TIMELINE"):
        with bf.timeline_context(tensor_name="w", activity_name=activity):
            yield
    else:
        yield


def centralized_solution(X, y, args, max_newton=50):
    """argmin of the average loss, by Newton's method with allreduce-averaged
    gradients and Hessians (every rank gets the same w)."""
    w = torch.zeros(args.dim, 1, dtype=torch.double)
    for it in range(max_newton):
        g = bf.allreduce(local_grad(w, X, y, args), average=True, name="newton.grad")
        if g.norm().item() < 1e-14:
            break
        H = torch.autograd.functional.hessian(lambda v: local_loss(v, X, y, args), w)
        H = bf.allreduce(H.reshape(args.dim, args.dim), average=True, name="newton.hessian")
        w = w - torch.linalg.solve(H, g)
    g = bf.allreduce(local_grad(w, X, y, args), average=True, name="newton.grad.final")
    return w, g.norm().item()


# ---- the decentralized methods ------------------------------------------------------------------
def neighbor_weights():
    """This rank's receive weights in the current topology (self, {src: w})."""
    return topology_util.GetRecvWeights(bf.load_topology(), bf.rank())


def diffusion(X, y, w_opt, args):
    self_weight, src_weights = neighbor_weights()
    w = torch.zeros(args.dim, 1, dtype=torch.double)
    dist = []
    for _ in range(args.max_iter):
        psi = w - args.lr * local_grad(w, X, y, args)
        w = bf.neighbor_allreduce(psi, self_weight=self_weight, src_weights=src_weights, name="w")
        dist.append(torch.norm(w - w_opt).item())
    return w, dist


def exact_diffusion(X, y, w_opt, args):
    """psi = w - lr grad; phi = psi + w - psi_prev; w = W_bar phi, W_bar = (I + W) / 2."""
    self_weight, src_weights = neighbor_weights()
    self_weight = (1.0 + self_weight) / 2
    src_weights = {r: v / 2 for r, v in src_weights.items()}
    w = torch.zeros(args.dim, 1, dtype=torch.double)
    psi_prev = w.clone()
    dist = []
    for _ in range(args.max_iter):
        psi = w - args.lr * local_grad(w, X, y, args)
        phi = psi + w - psi_prev
        w = bf.neighbor_allreduce(phi, self_weight=self_weight, src_weights=src_weights, name="w")
        psi_prev = psi
        dist.append(torch.norm(w - w_opt).item())
    return w, dist


def gradient_tracking(X, y, w_opt, args):
    """w = W w - lr q; q = W q + grad(w_new) - grad(w); q tracks the average gradient.
    The two neighbor_allreduce calls run at the same time (nonblocking)."""
    self_weight, src_weights = neighbor_weights()
    w = torch.zeros(args.dim, 1, dtype=torch.double)
    grad = local_grad(w, X, y, args)
    q = grad.clone()
    dist = []
    for _ in range(args.max_iter):
        hw = bf.neighbor_allreduce_nonblocking(w, self_weight=self_weight, src_weights=src_weights, name="w")
        hq = bf.neighbor_allreduce_nonblocking(q, self_weight=self_weight, src_weights=src_weights, name="q")
        w = bf.synchronize(hw) - args.lr * q
        new_grad = local_grad(w, X, y, args)
        q = bf.synchronize(hq) + new_grad - grad
        grad = new_grad
        dist.append(torch.norm(w - w_opt).item())
    return w, dist


def push_diging(X, y, w_opt, args):
    """Push-DIGing on the (possibly directed) topology. Each rank keeps
    buf = [u; q; v] (u: push-sum numerator of w, q: gradient tracker, v: push-sum
    weight) and gives half of it, split evenly, to its out-neighbors (column-
    stochastic mixing); w = u / v."""
    n = args.dim
    outs = bf.out_neighbor_ranks()
    # keep half (all of it with no out-neighbor: one rank), give the rest away evenly
    self_weight = 0.5 if outs else 1.0
    share = 1.0 / (2 * len(outs)) if outs else 0.0
    w = torch.zeros(n, 1, dtype=torch.double)
    grad = local_grad(w, X, y, args)
    buf = torch.zeros(2 * n + 1, 1, dtype=torch.double)
    buf[n:2 * n] = grad
    buf[-1] = 1.0
    bf.win_create(buf, name="push_diging.buf", zero_init=True)
    dist = []
    try:
        for _ in range(args.max_iter):
            buf[:n] -= args.lr * buf[n:2 * n]
            bf.barrier()  # everyone has collected the previous round
            bf.win_accumulate(buf, name="push_diging.buf", self_weight=self_weight,
                              dst_weights={r: share for r in outs}, require_mutex=True)
            bf.barrier()  # every share of this round has landed
            bf.win_update_then_collect(name="push_diging.buf")  # buf += received, in place
            w = buf[:n] / buf[-1]
            new_grad = local_grad(w, X, y, args)
            buf[n:2 * n] += new_grad - grad
            grad = new_grad
            dist.append(torch.norm(w - w_opt).item())
    finally:
        bf.win_free(name="push_diging.buf")
    return w, dist


def set_topology(name):
    size = bf.size()
    graphs = {"mesh": topology_util.MeshGrid2DGraph, "star": topology_util.StarGraph,
              "ring": topology_util.RingGraph, "expo2": topology_util.ExponentialGraph}
    bf.set_topology(graphs[name](size), is_weighted=True)


def plot(dist, args):
    semilogy_curve(dist, "||w - w*|| on rank 0", f"{args.method}, {args.task}, {args.topology}",
                   args.save_plot_file, args.plot_interactive)


def main():
    args = parse_args()
    bf.init()
    set_topology(args.topology)
    X, y = make_data(args)

    w_opt, grad_norm = centralized_solution(X, y, args)
    if bf.rank() == 0:
        print(f"{args.task} on {bf.size()} ranks ({args.data_size} samples x {args.dim} features each), "
              f"topology {args.topology}, method {args.method}, lr {args.lr}", flush=True)
        print(f"centralized solution by allreduce-Newton: ||w*|| {w_opt.norm().item():.4f}, "
              f"||grad f(w*)|| {grad_norm:.2e}", flush=True)

    method = {"diffusion": diffusion, "exact_diffusion": exact_diffusion,
              "gradient_tracking": gradient_tracking, "push_diging": push_diging}[args.method]
    w, dist = method(X, y, w_opt, args)

    final = torch.norm(w - w_opt).item()
    dists = bf.allgather(torch.tensor([final], dtype=torch.double), name="distances")
    spread = bf.allgather(w.reshape(1, -1), name="iterates")
    spread = (spread - spread.mean(0)).abs().max().item()
    if bf.rank() == 0:
        for k in range(0, len(dist), max(len(dist) // 5, 1)):
            print(f"iteration {k:5d}: ||w - w*|| on rank 0 {dist[k]:.3e}", flush=True)
        print("final ||w - w*|| per rank: " + " ".join(f"{d:.2e}" for d in dists.tolist()), flush=True)
        print(f"max |w_r - mean w| over ranks: {spread:.3e}", flush=True)
        print(f"distance to the centralized solution (max over ranks): {dists.max().item():.3e}", flush=True)
        if args.save_plot_file or args.plot_interactive:
            plot(dist, args)


if __name__ == "__main__":
    main()

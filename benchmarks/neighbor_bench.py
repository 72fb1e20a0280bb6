#!/usr/bin/env python
"""Neighbor averaging: BlueFog vs the same exchange in raw MPI (mpi4py) vs gloo allreduce.

All contenders run inside ONE MPI job (same processes, same placement). Per size (float32):

  bf.static      bf.neighbor_allreduce(t, name=...) on the default topology (ExponentialGraph
                 after bf.init(); uniform weights 1/(indegree+1)); returns a new tensor
  mpi4py.static  the same exchange in raw MPI: a dist-graph communicator built from the same
                 in/out-neighbor lists (comm.Create_dist_graph_adjacent(sources, destinations,
                 reorder=False)), Neighbor_allgather into a (indegree x n) receive buffer, then
                 the same weighted average in torch (x*w_self, then add_(recv[i], alpha=w_i) in
                 in-neighbor order: exactly BlueFog's arithmetic)
  bf.dyn1        one-peer dynamic exponential-2: the schedule of
                 bf.GetDynamicOnePeerSendRecvRanks(bf.ExponentialTwoGraph(size), rank), one step
                 per op; bf.neighbor_allreduce(t, self_weight=0.5, src_weights={recv: 0.5},
                 dst_weights={send: 1.0}, name=...)
  mpi4py.dyn1    the same step in raw MPI: comm.Sendrecv(x -> send, recv <- recv) and
                 0.5*x + 0.5*recv in torch
  gloo           torch.distributed.all_reduce(t) then t.div_(size): the global average, the
                 alternative a user would otherwise reach for (gloo over TCP loopback)

and, for fusion (--fusion-count tensors of --fusion-size each, default 64 x 16 KiB):

  bf.fused       the N bf.neighbor_allreduce_nonblocking(...) started back to back, then
                 bf.synchronize(...) of each (the core fuses ready ops into one message per
                 neighbor)
  bf.one_by_one  the same N bf.neighbor_allreduce(...) issued one at a time (each blocking)
  mpi4py.one_by_one / mpi4py.nonblocking   context: N Neighbor_allgather+average one at a
                 time, and N Ineighbor_allgather started together then Waitall + average
  mpi4py.fused   context: fusion written by hand in raw MPI: the N tensors packed into one
                 buffer (torch.cat), one Neighbor_allgather, one average over the whole
                 batch (a few large torch ops); each output is a slice of it. bf.one_by_one /
                 mpi4py.fused is the fusion ratio BlueFog would reach if its fused batch cost
                 no more than this hand-written one

Launch (either):
  .venv/bin/bfrun -np 4 .venv/bin/python benchmarks/neighbor_bench.py
  mpirun --allow-run-as-root --oversubscribe --mca pml ob1 --mca osc ^ucx -np 4 \\
      .venv/bin/python benchmarks/neighbor_bench.py

Method: the one of allreduce_bench.py (see benchmarks/README.md): correctness check once per
size and contender on rank-dependent data before timing; --warmup untimed ops; --trials
round-robin rounds in which every contender runs one block of --iters ops after a barrier and
--rewarm-seconds of untimed ops, the order rotating every round; every op timed on every rank. Reported: "median" =
per-rank median of individual ops, then the MAX over ranks (used for the targets); "block" =
block wall time / iters, max over ranks, median over rounds. A fusion "op" is the whole batch of N.

Targets (issue #4): bf.static <= 1.3x mpi4py.static at 4 KiB and <= 1.1x at 16 MiB (the same
limits are also reported for the dynamic pair); bf.fused >= 3x faster than bf.one_by_one.
"""
import argparse
import json
import os
import sys
import time

# mpi4py first: it initializes MPI with MPI_THREAD_MULTIPLE, which BlueFog then adopts.
import mpi4py

mpi4py.rc.thread_level = "multiple"
from mpi4py import MPI  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import allreduce_bench as ab  # noqa: E402  (parse_size, fmt_size, int_list, per-size options, init_gloo, TARGETS)

import bluefog.torch as bf  # noqa: E402

parse_size, fmt_size, int_list = ab.parse_size, ab.fmt_size, ab.int_list
by_size, per_size_option = ab.by_size, ab.per_size_option
measure, summarize = ab.measure, ab.summarize
TARGETS = ab.TARGETS          # {4 KiB: 1.3, 16 MiB: 1.1}: bluefog / raw MPI
FUSION_TARGET = 3.0           # bf.one_by_one / bf.fused
SIZE_CONTENDERS = ("bf.static", "mpi4py.static", "bf.dyn1", "mpi4py.dyn1", "gloo")
FUSION_CONTENDERS = ("bf.fused", "bf.one_by_one", "mpi4py.one_by_one", "mpi4py.nonblocking", "mpi4py.fused")
RTOL = 2e-6                   # float32 results against a float64 reference


# ----------------------------------------------------------------------------------------------
# Generic harness (also imported by win_bench.py)
# ----------------------------------------------------------------------------------------------
def base_values(nelem):
    """Rank-independent pattern; rank j's input is base + j (all exact in float32)."""
    return (np.arange(nelem, dtype=np.int64) % 251).astype(np.float32) * np.float32(0.5) + np.float32(1.0)


def check_close(got, expected, rtol=RTOL):
    """(ok, detail) for a float32 result against a float64 reference."""
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - expected)
    tol = rtol * np.maximum(np.abs(expected), 1.0)
    if got.shape == expected.shape and bool(np.all(err <= tol)):
        return True, ""
    if got.shape != expected.shape:
        return False, f"shape {got.shape} != expected {expected.shape}"
    bad = int(np.argmax(err > tol))
    return False, f"first mismatch at {bad}: got {got.flat[bad]!r}, expected {expected.flat[bad]!r}"


def verify_all(comm, contender):
    """Runs contender.verify() (one op on rank-dependent data) on every rank; all-rank verdict."""
    try:
        ok, detail = contender.verify()
    except Exception as e:  # a wrong API use shows as a failed check, not a hang
        ok, detail = False, f"{type(e).__name__}: {e}"
    all_ok = comm.allreduce(1 if ok else 0, op=MPI.MIN) == 1
    details = comm.gather(f"rank {comm.Get_rank()}: {detail}" if detail else "", root=0)
    return all_ok, [d for d in (details or []) if d]


def environment(comm):
    return dict(ab.environment(comm), bf_in_neighbors=comm.allgather(list(bf.in_neighbor_ranks())),
                bf_out_neighbors=comm.allgather(list(bf.out_neighbor_ranks())))


def fmt_load(la):
    return "/".join(f"{x:.1f}" for x in la)


def print_table(title, head, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    print()
    print(title)
    print("  ".join(str(h).rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


# ----------------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------------
class Ctx:
    """What the contenders share: world comm, topology, dist-graph communicator."""

    def __init__(self, comm, fresh_recv):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.in_nbrs = list(bf.in_neighbor_ranks())
        self.out_nbrs = list(bf.out_neighbor_ranks())
        self.uniform = 1.0 / (len(self.in_nbrs) + 1)
        # the same neighbor lists (and order) as BlueFog's: receive rows come in in_nbrs order
        self.graph_comm = comm.Create_dist_graph_adjacent(self.in_nbrs, self.out_nbrs, reorder=False)
        srcs, dsts, _ = self.graph_comm.Get_dist_neighbors()
        if list(srcs) != self.in_nbrs or list(dsts) != self.out_nbrs:
            raise SystemExit(f"dist-graph neighbors {srcs}/{dsts} != bluefog {self.in_nbrs}/{self.out_nbrs}")
        self.fresh_recv = fresh_recv

    def new_schedule(self):
        return bf.GetDynamicOnePeerSendRecvRanks(bf.ExponentialTwoGraph(self.size), self.rank)


def combine(x, recv_rows, self_weight, weights):
    """BlueFog's _combine: x*self_weight, then add_(row_i, alpha=w_i) in source order."""
    out = x.mul(self_weight)
    for row, w in zip(recv_rows, weights):
        if w != 0.0:
            out.add_(row, alpha=w)
    return out


class Contender:
    def __init__(self, label, ctx, nelem, tag):
        self.label, self.ctx, self.nelem = label, ctx, nelem
        self.name = f"bench.{label}.{tag}"
        self.x = torch.zeros(nelem, dtype=torch.float32)
        self.out = None

    def load(self):
        """Rank-dependent input for the check; returns the base pattern."""
        base = base_values(self.nelem)
        self.x.copy_(torch.from_numpy(base + np.float32(self.ctx.rank)))
        return base

    def reset(self):
        self.x.zero_()
        self.out = None


class StaticBF(Contender):
    def op(self):
        self.out = bf.neighbor_allreduce(self.x, name=self.name)

    def verify(self):
        base = self.load().astype(np.float64)
        c = self.ctx
        self.op()
        exp = c.uniform * (base + c.rank) + sum(c.uniform * (base + j) for j in c.in_nbrs)
        ok, d = check_close(self.out.numpy(), exp)
        if ok and not np.array_equal(self.x.numpy(), (base + c.rank).astype(np.float32)):
            ok, d = False, "the input was modified"
        self.reset()
        return ok, d


class StaticMPI(Contender):
    def __init__(self, *a):
        super().__init__(*a)
        self.x_np = self.x.numpy()
        self.recv = torch.empty(len(self.ctx.in_nbrs), self.nelem, dtype=torch.float32)
        self.weights = [self.ctx.uniform] * len(self.ctx.in_nbrs)

    def op(self):
        c = self.ctx
        recv = (torch.empty(len(c.in_nbrs), self.nelem, dtype=torch.float32) if c.fresh_recv else self.recv)
        c.graph_comm.Neighbor_allgather(self.x_np, recv.numpy())
        self.out = combine(self.x, recv, c.uniform, self.weights)

    verify = StaticBF.verify


class DynBF(Contender):
    def __init__(self, *a):
        super().__init__(*a)
        self.schedule = self.ctx.new_schedule()
        self.last = None

    def op(self):
        send, recv = next(self.schedule)
        self.last = (send, recv)
        w = 0.5 / len(recv) if recv else 0.0
        self.out = bf.neighbor_allreduce(self.x, self_weight=0.5 if recv else 1.0,
                                         src_weights={r: w for r in recv},
                                         dst_weights={s: 1.0 for s in send}, name=self.name)

    def verify(self):
        base = self.load().astype(np.float64)
        r = self.ctx.rank
        self.op()
        _, recv = self.last
        w = 0.5 / len(recv) if recv else 0.0
        exp = (0.5 if recv else 1.0) * (base + r) + sum(w * (base + j) for j in recv)
        ok, d = check_close(self.out.numpy(), exp)
        self.reset()
        return ok, d


class DynMPI(DynBF):
    def __init__(self, *a):
        super().__init__(*a)
        self.x_np = self.x.numpy()
        self.recv = torch.empty(1, self.nelem, dtype=torch.float32)

    def op(self):
        send, recv = next(self.schedule)
        self.last = (send, recv)
        c = self.ctx
        buf = self.recv if len(recv) == 1 and not c.fresh_recv else torch.empty(len(recv), self.nelem)
        if len(send) == 1 and len(recv) == 1:
            c.comm.Sendrecv(self.x_np, dest=send[0], sendtag=7, recvbuf=buf.numpy(), source=recv[0], recvtag=7)
        else:  # not reached with the one-peer schedule on a power-of-2 world
            reqs = [c.comm.Irecv(buf[i].numpy(), source=s, tag=7) for i, s in enumerate(recv)]
            reqs += [c.comm.Isend(self.x_np, dest=d, tag=7) for d in send]
            MPI.Request.Waitall(reqs)
        w = 0.5 / len(recv) if recv else 0.0
        self.out = combine(self.x, buf, 0.5 if recv else 1.0, [w] * len(recv))


class Gloo(Contender):
    def op(self):
        dist.all_reduce(self.x)
        self.x.div_(self.ctx.size)
        self.out = self.x

    def verify(self):
        base = self.load().astype(np.float64)
        self.op()
        s = self.ctx.size
        ok, d = check_close(self.out.numpy(), base + (s - 1) / 2.0)
        self.reset()
        return ok, d


class Batch:
    """N tensors of nelem float32 each; one op = the whole batch."""

    def __init__(self, label, ctx, count, nelem):
        self.label, self.ctx, self.count, self.nelem = label, ctx, count, nelem
        self.xs = [torch.zeros(nelem, dtype=torch.float32) for _ in range(count)]
        self.names = [f"bench.{label}.{i}" for i in range(count)]
        self.outs = None
        if label.startswith("mpi4py"):
            self.x_nps = [x.numpy() for x in self.xs]
            self.recvs = [torch.empty(len(ctx.in_nbrs), nelem, dtype=torch.float32) for _ in range(count)]
            self.weights = [ctx.uniform] * len(ctx.in_nbrs)
            # mpi4py.fused: every tensor packed into one buffer, one exchange into one receive buffer
            self.packed = torch.empty(count * nelem, dtype=torch.float32)
            self.recv_all = torch.empty(len(ctx.in_nbrs), count * nelem, dtype=torch.float32)

    def op(self, mark=lambda: None):
        """One batch. `mark()` is called between the fused contenders' phases (fusion_breakdown.py
        times them): bf.fused submitting | synchronizing, mpi4py.fused packing | exchange | average."""
        c, label = self.ctx, self.label
        if label == "bf.fused":
            handles = [bf.neighbor_allreduce_nonblocking(x, name=n) for x, n in zip(self.xs, self.names)]
            mark()
            self.outs = [bf.synchronize(h) for h in handles]
        elif label == "bf.one_by_one":
            self.outs = [bf.neighbor_allreduce(x, name=n) for x, n in zip(self.xs, self.names)]
        elif label == "mpi4py.one_by_one":
            outs = []
            for x, xn, recv in zip(self.xs, self.x_nps, self.recvs):
                c.graph_comm.Neighbor_allgather(xn, recv.numpy())
                outs.append(combine(x, recv, c.uniform, self.weights))
            self.outs = outs
        elif label == "mpi4py.fused":
            torch.cat(self.xs, out=self.packed)
            mark()
            c.graph_comm.Neighbor_allgather(self.packed.numpy(), self.recv_all.numpy())
            mark()
            # one average over the whole packed batch; the outputs are its slices
            self.outs = list(combine(self.packed, self.recv_all, c.uniform, self.weights).split(self.nelem))
        else:  # mpi4py.nonblocking
            reqs = [c.graph_comm.Ineighbor_allgather(xn, recv.numpy()) for xn, recv in zip(self.x_nps, self.recvs)]
            MPI.Request.Waitall(reqs)
            self.outs = [combine(x, recv, c.uniform, self.weights) for x, recv in zip(self.xs, self.recvs)]

    def verify(self):
        c = self.ctx
        base = base_values(self.nelem)
        for i, x in enumerate(self.xs):
            x.copy_(torch.from_numpy(base + np.float32(c.rank + 0.25 * i)))
        self.op()
        base = base.astype(np.float64)
        ok, detail = True, ""
        for i, out in enumerate(self.outs):
            exp = c.uniform * (base + c.rank + 0.25 * i) + sum(c.uniform * (base + j + 0.25 * i) for j in c.in_nbrs)
            ok, detail = check_close(out.numpy(), exp)
            if not ok:
                detail = f"tensor {i}: {detail}"
                break
        for x in self.xs:
            x.zero_()
        self.outs = None
        return ok, detail


SIZE_CLASSES = {"bf.static": StaticBF, "mpi4py.static": StaticMPI, "bf.dyn1": DynBF, "mpi4py.dyn1": DynMPI,
                "gloo": Gloo}


# ----------------------------------------------------------------------------------------------
def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4KiB,1MiB,16MiB", help="float32 message sizes (default 4KiB,1MiB,16MiB)")
    p.add_argument("--iters", default=None, help="timed ops per contender per round: one value or one per size "
                   "(default by size: 100 up to 64 KiB, 20 up to 4 MiB, 4 above)")
    p.add_argument("--warmup", default=None, help="untimed warm-up ops per contender per size: one value or one per "
                   "size (default by size: 10, 3, 1)")
    p.add_argument("--trials", type=int, default=10, help="round-robin rounds (default 10)")
    p.add_argument("--rewarm-seconds", type=float, default=0.3, help=ab.REWARM_HELP)
    p.add_argument("--fusion-count", type=int, default=64, help="tensors per fusion batch (default 64)")
    p.add_argument("--fusion-size", default="16KiB", help="size of each fusion tensor (default 16KiB)")
    p.add_argument("--fusion-iters", type=int, default=5, help="timed batches per contender per round (default 5)")
    p.add_argument("--fusion-warmup", type=int, default=2, help="untimed warm-up batches (default 2)")
    p.add_argument("--skip-fusion", action="store_true", help="do not run the fusion comparison")
    p.add_argument("--skip-gloo", action="store_true", help="leave out the gloo contender")
    p.add_argument("--mpi4py-fresh-recv", action="store_true",
                   help="the mpi4py contenders allocate a new receive buffer every op (as BlueFog does) instead "
                        "of reusing one")
    p.add_argument("--skip-negotiate", action="store_true",
                   help="diagnostic: bf.set_skip_negotiate_stage(True) for the whole run")
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads per rank (default 1)")
    p.add_argument("--gloo-timeout", type=float, default=300.0, help="gloo init/op timeout in seconds")
    p.add_argument("--json-out", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    a = p.parse_args()
    a.sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    a.iters = per_size_option(p, a, "iters", len(a.sizes), lambda i: by_size(a.sizes[i], 100, 20, 4))
    a.warmup = per_size_option(p, a, "warmup", len(a.sizes), lambda i: by_size(a.sizes[i], 10, 3, 1))
    a.fusion_size = parse_size(a.fusion_size)
    if any(v < 1 for v in a.iters) or a.trials < 1 or a.fusion_iters < 1 or a.fusion_count < 1:
        p.error("--iters, --trials, --fusion-iters and --fusion-count must be >= 1")
    return a


def run_group(comm, contenders, iters, warmup, trials, what, rewarm_seconds=0.3):
    verified = {}
    for c in contenders:
        ok, details = verify_all(comm, c)
        verified[c.label] = ok
        if comm.Get_rank() == 0 and not ok:
            print(f"!! {what} {c.label}: WRONG RESULT: {'; '.join(details)}", flush=True)
    for c in contenders:
        for _ in range(warmup):
            c.op()
    lat, block = measure(comm, contenders, iters, trials, rewarm_seconds)
    return summarize(comm, [c.label for c in contenders], lat, block, verified, trials)


def main(args):
    comm = MPI.COMM_WORLD
    rank, size = ab.start_bluefog(comm, args.torch_threads, args.skip_negotiate, "neighbor_bench", min_ranks=2)
    labels = [x for x in SIZE_CONTENDERS if not (args.skip_gloo and x == "gloo")]
    env = environment(comm)
    if "gloo" in labels:
        ab.ARGS = args  # ab.init_gloo reads ARGS.gloo_timeout
        env["gloo_port"] = ab.init_gloo(comm)
    ctx = Ctx(comm, args.mpi4py_fresh_recv)
    if rank == 0:
        print(f"# neighbor benchmark: {size} ranks, {env['cpu_count']} cores on {env['hostname']}; "
              f"{env['mpi_library']}; MPI thread level {env['mpi_thread_level']}; torch {env['torch']}", flush=True)
        print(f"# topology: {type(bf.load_topology()).__name__} in-neighbors {env['bf_in_neighbors']}, "
              f"out-neighbors {env['bf_out_neighbors']}", flush=True)
        print(f"# sizes {[fmt_size(s) for s in args.sizes]}, iters {args.iters}, warmup {args.warmup}, trials "
              f"{args.trials}, re-warm {args.rewarm_seconds} s; fusion {args.fusion_count} x {fmt_size(args.fusion_size)}, iters {args.fusion_iters}; "
              f"mpi4py fresh recv {args.mpi4py_fresh_recv}; bf skip-negotiate {env['bf_skip_negotiate']}; "
              f"BLUEFOG_* env {env['bluefog_env'] or 'none'}; load average {fmt_load(env['loadavg_at_start'])}",
              flush=True)

    t_start = time.perf_counter()
    results = []
    for si, nbytes in enumerate(args.sizes):
        nelem = nbytes // 4
        cs = [SIZE_CLASSES[label](label, ctx, nelem, nbytes) for label in labels]
        stats = run_group(comm, cs, args.iters[si], args.warmup[si], args.trials, fmt_size(nbytes),
                          args.rewarm_seconds)
        load = list(os.getloadavg())
        if rank == 0:
            row = {"size_bytes": nbytes, "size": fmt_size(nbytes), "iters": args.iters[si],
                   "warmup": args.warmup[si], "trials": args.trials, "loadavg_after": load, "contenders": stats}
            for key in ("median_us", "block_median_us"):
                pre = "" if key == "median_us" else "block_"
                row[pre + "ratio_static_bf_over_mpi4py"] = stats["bf.static"][key] / stats["mpi4py.static"][key]
                row[pre + "ratio_dyn1_bf_over_mpi4py"] = stats["bf.dyn1"][key] / stats["mpi4py.dyn1"][key]
                if "gloo" in stats:
                    row[pre + "ratio_static_bf_over_gloo"] = stats["bf.static"][key] / stats["gloo"][key]
                    row[pre + "ratio_dyn1_bf_over_gloo"] = stats["bf.dyn1"][key] / stats["gloo"][key]
            results.append(row)
            print(f"# done {fmt_size(nbytes)} ({time.perf_counter() - t_start:.0f} s elapsed, load average "
                  f"{fmt_load(load)})", flush=True)
        del cs

    fusion = None
    if not args.skip_fusion:
        bs = [Batch(label, ctx, args.fusion_count, args.fusion_size // 4) for label in FUSION_CONTENDERS]
        stats = run_group(comm, bs, args.fusion_iters, args.fusion_warmup, args.trials, "fusion",
                          args.rewarm_seconds)
        load = list(os.getloadavg())
        if rank == 0:
            fusion = {"count": args.fusion_count, "size_bytes": args.fusion_size, "iters": args.fusion_iters,
                      "warmup": args.fusion_warmup, "trials": args.trials, "loadavg_after": load,
                      "contenders": stats,
                      "speedup_fused": stats["bf.one_by_one"]["median_us"] / stats["bf.fused"]["median_us"],
                      "block_speedup_fused": (stats["bf.one_by_one"]["block_median_us"]
                                              / stats["bf.fused"]["block_median_us"])}
            print(f"# done fusion ({time.perf_counter() - t_start:.0f} s elapsed, load average {fmt_load(load)})",
                  flush=True)
        del bs

    if rank == 0:
        env["loadavg_at_end"] = list(os.getloadavg())
        report(args, labels, results, fusion, env, time.perf_counter() - t_start)
    comm.Barrier()
    ctx.graph_comm.Free()
    if "gloo" in labels:
        dist.destroy_process_group()
    bf.shutdown()


def report(args, labels, results, fusion, env, elapsed):
    has_gloo = "gloo" in labels
    ratio_cols = ["static bf/mpi", "dyn1 bf/mpi"] + (["static bf/gloo", "dyn1 bf/gloo"] if has_gloo else [])
    for key, pre, title in (("median_us", "", "Median latency per op, us (per-rank median of individual ops, "
                                               "max over ranks)"),
                            ("block_median_us", "block_", "Block time per op, us (block wall time / iters, max "
                                                          "over ranks, median over rounds)")):
        rows = []
        for r in results:
            c = r["contenders"]
            cells = [r["size"]] + [f"{c[k][key]:.1f}" for k in labels]
            cells += [f"{r[pre + 'ratio_static_bf_over_mpi4py']:.2f}x", f"{r[pre + 'ratio_dyn1_bf_over_mpi4py']:.2f}x"]
            if has_gloo:
                cells += [f"{r[pre + 'ratio_static_bf_over_gloo']:.2f}x", f"{r[pre + 'ratio_dyn1_bf_over_gloo']:.2f}x"]
            rows.append(cells + [fmt_load(r["loadavg_after"][:1])])
        print_table(title, ["size"] + labels + ratio_cols + ["load1"], rows)

    if fusion:
        c = fusion["contenders"]
        rows = [[k, f"{c[k]['median_us']:.1f}", f"{c[k]['median_us'] / fusion['count']:.1f}",
                 f"{c[k]['block_median_us']:.1f}",
                 f"{c['bf.one_by_one']['median_us'] / c[k]['median_us']:.2f}x"] for k in FUSION_CONTENDERS]
        print_table(f"Fusion: {fusion['count']} x {fmt_size(fusion['size_bytes'])} neighbor_allreduce per batch "
                    f"(load average after: {fmt_load(fusion['loadavg_after'])})",
                    ["contender", "median/batch us", "per tensor us", "block/batch us", "bf.one_by_one / this"], rows)

    bad = [(r["size"], k) for r in results for k, v in r["contenders"].items() if not v["verified"]]
    if fusion:
        bad += [("fusion", k) for k, v in fusion["contenders"].items() if not v["verified"]]
    print()
    print("Correctness: " + ("every contender returned the expected weighted average" if not bad else
                             "WRONG RESULTS for " + ", ".join(f"{k} @ {s}" for s, k in bad)))
    targets = []
    for nbytes, limit in TARGETS.items():
        r = next((x for x in results if x["size_bytes"] == nbytes), None)
        if r is None:
            print(f"Target bf <= {limit}x mpi4py @ {fmt_size(nbytes)}: not measured (size not in --sizes)")
            continue
        for kind in ("static", "dyn1"):
            ratio = r[f"ratio_{kind}_bf_over_mpi4py"]
            met = ratio <= limit and r["contenders"][f"bf.{kind}"]["verified"]
            targets.append({"what": f"bf.{kind} / mpi4py.{kind}", "size_bytes": nbytes, "limit": limit,
                            "ratio": ratio, "met": met})
            print(f"Target bf.{kind} <= {limit}x mpi4py.{kind} @ {fmt_size(nbytes)}: {ratio:.2f}x -> "
                  f"{'MET' if met else 'NOT MET'}")
    if fusion:
        sp = fusion["speedup_fused"]
        met = sp >= FUSION_TARGET and fusion["contenders"]["bf.fused"]["verified"]
        targets.append({"what": "bf.one_by_one / bf.fused", "limit": FUSION_TARGET, "ratio": sp, "met": met})
        print(f"Target fusion speed-up >= {FUSION_TARGET:.0f}x ({fusion['count']} x "
              f"{fmt_size(fusion['size_bytes'])}): {sp:.2f}x -> {'MET' if met else 'NOT MET'} "
              f"(block-time view: {fusion['block_speedup_fused']:.2f}x)")
        floor = c["bf.one_by_one"]["median_us"] / c["mpi4py.fused"]["median_us"]
        print(f"  context: the same ratio with the batch fused by hand in raw MPI (bf.one_by_one / mpi4py.fused): "
              f"{floor:.2f}x; bf.fused / mpi4py.fused: {c['bf.fused']['median_us'] / c['mpi4py.fused']['median_us']:.2f}x")
    print(f"Total benchmark time {elapsed:.0f} s; load average (1/5/15 min) at start "
          f"{fmt_load(env['loadavg_at_start'])}, at end {fmt_load(env['loadavg_at_end'])} on "
          f"{env['cpu_count']} cores (the {env['world_size']} benchmark ranks alone account for about "
          f"{env['world_size']})")
    sys.stdout.flush()
    if args.json_out:
        doc = {"benchmark": "neighbor_bench", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "env": env,
               "options": {k: v for k, v in vars(args).items() if k != "json_out"},
               "results": results, "fusion": fusion, "targets": targets, "elapsed_s": elapsed}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"JSON written to {args.json_out}")


if __name__ == "__main__":
    main(parse_args())

#!/usr/bin/env python
"""One-sided window ops: bf.win_put / bf.win_accumulate vs the same transfers in raw MPI RMA (mpi4py).

All contenders run inside ONE MPI job. Per size (float32), one op sends this rank's tensor to
ALL its out-neighbors in the default topology (ExponentialGraph after bf.init()):

  bf.win_put        bf.win_put(x, name): an MPI_Put of x into this rank's slot of the window
                    at each out-neighbor (window from bf.win_create(x, name, zero_init=True))
  mpi4py.put        the same in raw MPI RMA: a window made with MPI.Alloc_mem + MPI.Win.Create
                    over one slot per in-neighbor (slot order = the receiver's in-neighbor list,
                    as in BlueFog); per destination Lock(SHARED) / Put / Unlock
  mpi4py.put+ver    context: mpi4py.put plus, per destination, the extra epoch BlueFog adds for
                    its version counters (Lock(SHARED) / Accumulate(int32 1, SUM) / Unlock on a
                    second window): the same MPI calls BlueFog makes
  bf.win_acc        bf.win_accumulate(x, name): MPI_Accumulate(SUM) into my slot at each
                    out-neighbor
  mpi4py.acc        Lock(SHARED) / Accumulate(SUM) / Unlock per destination
  mpi4py.acc+ver    context: mpi4py.acc plus the version-counter epoch

Reported: median per op in us (per-rank median of individual ops, then the max over ranks),
GB/s = out-degree x bytes / median (payload leaving this rank; 1 GB = 1e9 B), the ratios
bf / mpi4py, and a block-time table (block wall time / iters, max over ranks, median over rounds).
Correctness is checked before timing: after a put (or two accumulates) and a barrier, every rank
reads each in-neighbor's slot (via bf.win_update(name, 0.0, {j: 1.0}, clone=True) for BlueFog,
through a local exclusive lock for mpi4py) and compares it with that neighbor's data.

Launch (either):
  .venv/bin/bfrun -np 4 .venv/bin/python benchmarks/win_bench.py
  mpirun --allow-run-as-root --oversubscribe --mca pml ob1 --mca osc ^ucx -np 4 \\
      .venv/bin/python benchmarks/win_bench.py

Method (interleaving, warm-up, statistics): as in allreduce_bench.py and neighbor_bench.py.
Timing buffers hold zeros, so repeated accumulates neither overflow nor hit denormals.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import neighbor_bench as nb  # noqa: E402  (harness: verify_all, measure, summarize, environment, ...)

import bluefog.torch as bf  # noqa: E402

CONTENDERS = ("bf.win_put", "mpi4py.put", "mpi4py.put+ver", "bf.win_acc", "mpi4py.acc", "mpi4py.acc+ver")
PAIRS = (("put", "bf.win_put", "mpi4py.put", "mpi4py.put+ver"), ("acc", "bf.win_acc", "mpi4py.acc", "mpi4py.acc+ver"))


class Windows:
    """One BlueFog window and one mpi4py window (+ version-counter window) of one size."""

    def __init__(self, comm, nelem, nbytes):
        self.comm, self.nelem, self.nbytes = comm, nelem, nbytes
        self.rank = comm.Get_rank()
        self.in_nbrs = list(bf.in_neighbor_ranks())
        self.out_nbrs = sorted(bf.out_neighbor_ranks())   # BlueFog puts in ascending rank order
        all_in = comm.allgather(self.in_nbrs)
        self.slot = {d: all_in[d].index(self.rank) for d in self.out_nbrs}
        # BlueFog
        self.name = f"bench.win.{nbytes}"
        self.x = torch.zeros(nelem, dtype=torch.float32)
        bf.win_create(self.x, self.name, zero_init=True)
        # mpi4py: the memory BlueFog uses too (MPI_Alloc_mem + MPI_Win_create, disp_unit 1)
        n_in = len(self.in_nbrs)
        self.mem = MPI.Alloc_mem(max(1, n_in * nbytes))
        self.view = np.frombuffer(self.mem, dtype=np.float32, count=n_in * nelem).reshape(n_in, nelem)
        self.view[:] = 0
        self.win = MPI.Win.Create(self.mem, 1, comm=comm)
        self.vmem = MPI.Alloc_mem(4 * max(1, n_in))
        np.frombuffer(self.vmem, dtype=np.int32)[:] = 0
        self.vwin = MPI.Win.Create(self.vmem, 4, comm=comm)
        self.x_np = np.zeros(nelem, dtype=np.float32)
        self.one = np.ones(1, dtype=np.int32)

    def free(self):
        bf.win_free(self.name)
        self.win.Free()
        self.vwin.Free()
        MPI.Free_mem(self.mem)
        MPI.Free_mem(self.vmem)

    # ---- the raw MPI op
    def mpi_op(self, accumulate, version):
        win, x, nbytes, nelem = self.win, self.x_np, self.nbytes, self.nelem
        for d in self.out_nbrs:
            slot = self.slot[d]
            win.Lock(d, MPI.LOCK_SHARED)
            if accumulate:
                win.Accumulate([x, nelem, MPI.FLOAT], d, target=(slot * nbytes, nelem, MPI.FLOAT), op=MPI.SUM)
            else:
                win.Put([x, nelem, MPI.FLOAT], d, target=(slot * nbytes, nelem, MPI.FLOAT))
            win.Unlock(d)
            if version:
                self.vwin.Lock(d, MPI.LOCK_SHARED)
                self.vwin.Accumulate([self.one, 1, MPI.INT32_T], d, target=(slot, 1, MPI.INT32_T), op=MPI.SUM)
                self.vwin.Unlock(d)

    # ---- reading / clearing this rank's slots
    def bf_slots(self):
        return {j: bf.win_update(self.name, 0.0, {j: 1.0}, clone=True).numpy().copy() for j in self.in_nbrs}

    def mpi_slots(self):
        self.win.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        out = {j: self.view[i].copy() for i, j in enumerate(self.in_nbrs)}
        self.win.Unlock(self.rank)
        return out

    def clear(self):
        """Collective: zero every slot (both windows) and the inputs."""
        self.comm.Barrier()
        if self.in_nbrs:
            bf.win_update(self.name, 0.0, {j: 1.0 for j in self.in_nbrs}, reset=True, clone=True)
        self.win.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        self.view[:] = 0
        self.win.Unlock(self.rank)
        self.x.zero_()
        self.x_np[:] = 0
        self.comm.Barrier()


class WinContender:
    def __init__(self, label, w):
        self.label, self.w = label, w
        self.accumulate = label.endswith("acc") or "acc+" in label
        self.version = label.endswith("+ver")

    def op(self):
        if self.label == "bf.win_put":
            bf.win_put(self.w.x, self.w.name)
        elif self.label == "bf.win_acc":
            bf.win_accumulate(self.w.x, self.w.name)
        else:
            self.w.mpi_op(self.accumulate, self.version)

    def verify(self):
        """Collective. One put (or two accumulates) of base + rank; each slot j must hold
        base + j (or 2 * (base + j))."""
        w = self.w
        w.clear()
        base = nb.base_values(w.nelem)
        mine = base + np.float32(w.rank)
        w.x.copy_(torch.from_numpy(mine))
        w.x_np[:] = mine
        w.comm.Barrier()
        for _ in range(2 if self.accumulate else 1):
            self.op()
        w.comm.Barrier()
        slots = w.bf_slots() if self.label.startswith("bf.") else w.mpi_slots()
        ok, detail = True, ""
        factor = 2.0 if self.accumulate else 1.0
        for j, got in slots.items():
            ok, detail = nb.check_close(got, factor * (base.astype(np.float64) + j), rtol=0.0)
            if not ok:
                detail = f"slot of in-neighbor {j}: {detail}"
                break
        if ok and self.label.startswith("bf.") and not np.array_equal(w.x.numpy(), mine):
            ok, detail = False, "the local tensor changed (self_weight defaults to 1.0)"
        w.clear()
        return ok, detail


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4KiB,1MiB,16MiB", help="float32 window sizes (default 4KiB,1MiB,16MiB)")
    p.add_argument("--iters", default=None, help="timed ops per contender per round: one value or one per size "
                   "(default by size: 100 up to 64 KiB, 10 up to 4 MiB, 2 above)")
    p.add_argument("--warmup", default=None, help="untimed warm-up ops per contender per size: one value or one per "
                   "size (default by size: 10, 3, 1)")
    p.add_argument("--trials", type=int, default=8, help="round-robin rounds (default 8)")
    p.add_argument("--rewarm-seconds", type=float, default=0.3, help=nb.ab.REWARM_HELP)
    p.add_argument("--skip-negotiate", action="store_true",
                   help="diagnostic: bf.set_skip_negotiate_stage(True) for the whole run")
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads per rank (default 1)")
    p.add_argument("--json-out", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    a = p.parse_args()
    a.sizes = [nb.parse_size(s) for s in a.sizes.split(",") if s.strip()]
    a.iters = nb.per_size_option(p, a, "iters", len(a.sizes), lambda i: nb.by_size(a.sizes[i], 100, 10, 2))
    a.warmup = nb.per_size_option(p, a, "warmup", len(a.sizes), lambda i: nb.by_size(a.sizes[i], 10, 3, 1))
    if any(v < 1 for v in a.iters) or a.trials < 1:
        p.error("--iters and --trials must be >= 1")
    return a


def main(args):
    comm = MPI.COMM_WORLD
    rank, size = nb.ab.start_bluefog(comm, args.torch_threads, args.skip_negotiate, "win_bench", min_ranks=2)
    env = nb.environment(comm)
    env["unified_window_model"] = bool(bf.unified_mpi_window_model_supported())
    out_degree = len(bf.out_neighbor_ranks())
    env["out_degree_max"] = comm.allreduce(out_degree, op=MPI.MAX)
    if rank == 0:
        print(f"# window benchmark: {size} ranks, {env['cpu_count']} cores on {env['hostname']}; "
              f"{env['mpi_library']}; MPI thread level {env['mpi_thread_level']}; unified window model "
              f"{env['unified_window_model']}; torch {env['torch']}", flush=True)
        print(f"# out-neighbors {env['bf_out_neighbors']}, in-neighbors {env['bf_in_neighbors']}", flush=True)
        print(f"# sizes {[nb.fmt_size(s) for s in args.sizes]}, iters {args.iters}, warmup {args.warmup}, "
              f"trials {args.trials}, re-warm {args.rewarm_seconds} s; bf skip-negotiate {env['bf_skip_negotiate']}; BLUEFOG_* env "
              f"{env['bluefog_env'] or 'none'}; load average {nb.fmt_load(env['loadavg_at_start'])}", flush=True)

    t_start = time.perf_counter()
    results = []
    for si, nbytes in enumerate(args.sizes):
        w = Windows(comm, nbytes // 4, nbytes)
        cs = [WinContender(label, w) for label in CONTENDERS]
        stats = nb.run_group(comm, cs, args.iters[si], args.warmup[si], args.trials, nb.fmt_size(nbytes),
                             args.rewarm_seconds)
        comm.Barrier()
        w.free()
        load = list(os.getloadavg())
        if rank == 0:
            moved = env["out_degree_max"] * nbytes
            for v in stats.values():
                v["gb_per_s"] = moved / (v["median_us"] * 1e3)
                v["block_gb_per_s"] = moved / (v["block_median_us"] * 1e3)
            row = {"size_bytes": nbytes, "size": nb.fmt_size(nbytes), "iters": args.iters[si],
                   "warmup": args.warmup[si], "trials": args.trials, "bytes_per_op": moved,
                   "loadavg_after": load, "contenders": stats}
            for kind, b, m, mv in PAIRS:
                row[f"ratio_{kind}_bf_over_mpi4py"] = stats[b]["median_us"] / stats[m]["median_us"]
                row[f"ratio_{kind}_bf_over_mpi4py_ver"] = stats[b]["median_us"] / stats[mv]["median_us"]
                row[f"block_ratio_{kind}_bf_over_mpi4py"] = stats[b]["block_median_us"] / stats[m]["block_median_us"]
            results.append(row)
            print(f"# done {nb.fmt_size(nbytes)} ({time.perf_counter() - t_start:.0f} s elapsed, load average "
                  f"{nb.fmt_load(load)})", flush=True)

    if rank == 0:
        env["loadavg_at_end"] = list(os.getloadavg())
        report(args, results, env, time.perf_counter() - t_start)
    comm.Barrier()
    bf.shutdown()


def report(args, results, env, elapsed):
    rows = []
    for r in results:
        c = r["contenders"]
        rows.append([r["size"]] + [f"{c[k]['median_us']:.1f}" for k in CONTENDERS]
                    + [f"{r['ratio_put_bf_over_mpi4py']:.2f}x", f"{r['ratio_put_bf_over_mpi4py_ver']:.2f}x",
                       f"{r['ratio_acc_bf_over_mpi4py']:.2f}x", f"{r['ratio_acc_bf_over_mpi4py_ver']:.2f}x",
                       nb.fmt_load(r["loadavg_after"][:1])])
    nb.print_table("Median per op (one op = to all out-neighbors), us (per-rank median, max over ranks)",
                   ["size"] + list(CONTENDERS) + ["put bf/mpi", "put bf/mpi+ver", "acc bf/mpi", "acc bf/mpi+ver",
                                                  "load1"], rows)
    rows = [[r["size"], nb.fmt_size(r["bytes_per_op"])] + [f"{r['contenders'][k]['gb_per_s']:.3f}" for k in CONTENDERS]
            for r in results]
    nb.print_table("Throughput from the medians, GB/s (out-degree x size per op)", ["size", "bytes/op"]
                   + list(CONTENDERS), rows)
    rows = [[r["size"]] + [f"{r['contenders'][k]['block_median_us']:.1f}" for k in CONTENDERS]
            + [f"{r['block_ratio_put_bf_over_mpi4py']:.2f}x", f"{r['block_ratio_acc_bf_over_mpi4py']:.2f}x"]
            for r in results]
    nb.print_table("Block time per op, us (block wall time / iters, max over ranks, median over rounds)",
                   ["size"] + list(CONTENDERS) + ["put bf/mpi", "acc bf/mpi"], rows)
    bad = [(r["size"], k) for r in results for k, v in r["contenders"].items() if not v["verified"]]
    print()
    print("Correctness: " + ("every contender delivered exactly the sender's data (put) or its double "
                             "(two accumulates)" if not bad else
                             "WRONG RESULTS for " + ", ".join(f"{k} @ {s}" for s, k in bad)))
    print(f"Total benchmark time {elapsed:.0f} s; load average (1/5/15 min) at start "
          f"{nb.fmt_load(env['loadavg_at_start'])}, at end {nb.fmt_load(env['loadavg_at_end'])} on "
          f"{env['cpu_count']} cores (the {env['world_size']} benchmark ranks alone account for about "
          f"{env['world_size']})")
    sys.stdout.flush()
    if args.json_out:
        doc = {"benchmark": "win_bench", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "env": env,
               "options": {k: v for k, v in vars(args).items() if k != "json_out"},
               "results": results, "elapsed_s": elapsed}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"JSON written to {args.json_out}")


if __name__ == "__main__":
    main(parse_args())

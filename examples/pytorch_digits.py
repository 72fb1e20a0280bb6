"""Train a small CNN on scikit-learn's handwritten digits (8x8) across ranks
with a BlueFog distributed optimizer.

Each rank trains on its own shard of the training set. The default optimizer is
decentralized: after every batch each rank averages its parameters with ONE
neighbor (a dynamic exponential-2 graph whose self_weight / src_weights /
dst_weights change every batch); no global averaging happens. Other choices:

  --dist-optimizer neighbor_allreduce               average with neighbors (default)
  --dist-optimizer hierarchical_neighbor_allreduce  average inside the machine, then with neighbor machines
  --dist-optimizer allreduce                        average the parameters over all ranks
  --dist-optimizer gradient_allreduce               average the gradients over all ranks (Horovod style)
  --dist-optimizer win_put                          asynchronous gossip through one-sided windows
  --dist-optimizer push_sum                         push-sum through one-sided windows
  --atc-style                                       adapt-then-combine instead of adapt-with-combine
  --disable-dynamic-topology                        always the whole static exponential graph

The parameters and optimizer state start equal on every rank
(bf.broadcast_parameters and bf.broadcast_optimizer_state). Rank 0 prints the
test accuracy, averaged over the ranks' models:

    bfrun -np 4 python examples/pytorch_digits.py
    bfrun -np 4 python examples/pytorch_digits.py --dist-optimizer gradient_allreduce
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import bluefog.torch as bf
from bluefog.common import topology_util
from bluefog.torch.optimizers import DistributedPushSumOptimizer

try:
    from tqdm import tqdm
except ImportError:  # progress bar is optional
    tqdm = None

OPTIMIZERS = ["neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce", "gradient_allreduce",
              "win_put", "push_sum"]


def parse_args():
    parser = argparse.ArgumentParser(description="BlueFog digits example",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dist-optimizer", type=str, default="neighbor_allreduce", choices=OPTIMIZERS)
    parser.add_argument("--atc-style", action="store_true", default=False,
                        help="adapt-then-combine (neighbor_allreduce, hierarchical, allreduce)")
    parser.add_argument("--disable-dynamic-topology", action="store_true", default=False,
                        help="use the static exponential graph instead of one peer per batch")
    parser.add_argument("--no-progress", action="store_true", default=False, help="no tqdm progress bar")
    return parser.parse_args()


def load_digits_split(seed):
    """The digits data set that ships with scikit-learn, split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def machine_count():
    return bf.machine_size()


def make_optimizer(model, args):
    base = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    name = args.dist_optimizer
    if name == "gradient_allreduce":
        return bf.DistributedGradientAllreduceOptimizer(base, model)
    if name == "win_put":
        return bf.DistributedWinPutOptimizer(base, model)
    if name == "push_sum":
        return DistributedPushSumOptimizer(base, model)
    if name == "hierarchical_neighbor_allreduce" and not bf.is_homogeneous():
        # Machines of different sizes: the hierarchical op needs every machine alike.
        if bf.rank() == 0:
            print("the machines have different numbers of ranks, which hierarchical_neighbor_allreduce "
                  "does not support; using neighbor_allreduce instead", flush=True)
        name = args.dist_optimizer = "neighbor_allreduce"
    comm = {"neighbor_allreduce": bf.CommunicationType.neighbor_allreduce,
            "hierarchical_neighbor_allreduce": bf.CommunicationType.hierarchical_neighbor_allreduce,
            "allreduce": bf.CommunicationType.allreduce}[name]
    if comm == bf.CommunicationType.hierarchical_neighbor_allreduce:
        bf.set_machine_topology(topology_util.ExponentialGraph(machine_count()))
    factory = (bf.DistributedAdaptThenCombineOptimizer if args.atc_style
               else bf.DistributedAdaptWithCombineOptimizer)
    return factory(base, model, communication_type=comm)


def dynamic_topology_updater(optimizer, args):
    """A function called before every batch that picks this batch's peers, or None."""
    if args.disable_dynamic_topology or bf.size() == 1:
        return None
    name = args.dist_optimizer
    if name == "neighbor_allreduce":
        schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

        def update(batch):
            send, recv = next(schedule)
            optimizer.self_weight = 1.0 / (len(recv) + 1)
            optimizer.src_weights = {r: 1.0 / (len(recv) + 1) for r in recv}
            optimizer.dst_weights = {r: 1.0 for r in send}
        return update
    if name == "hierarchical_neighbor_allreduce":
        if machine_count() < 2:
            if bf.rank() == 0:
                print("one machine: hierarchical_neighbor_allreduce averages inside it (no dynamic topology)",
                      flush=True)
            return None
        schedule = topology_util.GetExp2DynamicSendRecvMachineRanks(bf.size(), bf.local_size(), bf.rank(),
                                                                    bf.local_rank())

        def update(batch):
            send, recv = next(schedule)
            optimizer.self_weight = 1.0 / (len(recv) + 1)
            optimizer.src_machine_weights = {m: 1.0 / (len(recv) + 1) for m in recv}
            optimizer.dst_machine_weights = send
        return update
    if name == "win_put":
        outs = bf.out_neighbor_ranks()

        def update(batch):
            optimizer.dst_weights = {outs[batch % len(outs)]: 1.0}
        return update
    if name == "push_sum":
        schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

        def update(batch):
            send, _ = next(schedule)
            optimizer.self_weight = 0.5
            optimizer.dst_weights = {send[0]: 0.5}
        return update
    return None  # allreduce / gradient_allreduce: every rank talks to every rank anyway


def evaluate(model, x, y):
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean()
    model.train()
    return accuracy


def main():
    args = parse_args()
    bf.init()
    if "OMP_NUM_THREADS" not in os.environ:
        # Ranks that share a machine share its cores: one thread pool per core, not per rank.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // bf.local_size()))
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    # Every rank takes the same number of steps per epoch (the communication is collective).
    steps_per_epoch = int(np.ceil((len(x_train) // bf.size()) / args.batch_size))
    # Each rank its own shard.
    x_train, y_train = x_train[bf.rank()::bf.size()], y_train[bf.rank()::bf.size()]
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

    model = Net()
    # Start from the same point on every rank.
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = make_optimizer(model, args)
    bf.broadcast_optimizer_state(optimizer, root_rank=0)
    update_topology = dynamic_topology_updater(optimizer, args)
    if bf.rank() == 0:
        style = ""
        if args.dist_optimizer in ("neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce"):
            style = " (adapt-then-combine)" if args.atc_style else " (adapt-with-combine)"
        print(f"{bf.size()} ranks, {args.dist_optimizer}{style}, "
              f"{'static' if update_topology is None else 'dynamic'} topology, "
              f"{len(x_train)} training images per rank", flush=True)

    progress = tqdm is not None and bf.rank() == 0 and not args.no_progress
    epochs = tqdm(range(args.epochs), desc="epochs", file=sys.stdout, mininterval=1.0) if progress \
        else range(args.epochs)
    log = tqdm.write if progress else (lambda s: print(s, flush=True))

    start = time.time()
    batch = 0
    for epoch in epochs:
        perm = torch.randperm(len(x_train))
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            if update_topology is not None:
                update_topology(batch)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            batch += 1
        avg_loss = bf.allreduce(torch.tensor(total_loss / steps_per_epoch), name="loss").item()
        if bf.rank() == 0:
            log(f"epoch {epoch + 1:2d}  mean training loss {avg_loss:.4f}")
            if progress:
                epochs.set_postfix(loss=f"{avg_loss:.4f}")
    if progress:
        epochs.close()

    # With a decentralized optimizer every rank holds its own model: report their mean and worst.
    accuracy = evaluate(model, x_test, y_test)
    accuracies = bf.allgather(accuracy.reshape(1), name="accuracy")
    if hasattr(optimizer, "unregister_window"):
        optimizer.unregister_window()
    if bf.rank() == 0:
        print(f"test accuracy {accuracies.mean().item():.4f} on {len(y_test)} images "
              f"(min over ranks {accuracies.min().item():.4f}; {bf.size()} ranks, "
              f"{args.dist_optimizer}, {time.time() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()

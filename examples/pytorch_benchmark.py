"""Synthetic-data training throughput (images/second) of a small ResNet-style
CNN with a BlueFog distributed optimizer. No data set and no torchvision are
needed: every batch is random 3 x H x W images with random labels.

    bfrun -np 4 python examples/pytorch_benchmark.py
    bfrun -np 4 python examples/pytorch_benchmark.py --dist-optimizer gradient_allreduce --batch-size 64

Every rank prints its own img/sec; rank 0 prints the per-rank mean and the total.
"""
import argparse
import os
import timeit

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import bluefog.torch as bf
from bluefog.common import topology_util
from bluefog.torch.optimizers import DistributedPullGetOptimizer, DistributedPushSumOptimizer

OPTIMIZERS = ["neighbor_allreduce", "hierarchical_neighbor_allreduce", "allreduce", "gradient_allreduce",
              "win_put", "pull_get", "push_sum", "local"]


def parse_args():
    parser = argparse.ArgumentParser(description="BlueFog synthetic benchmark",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=str, default="resnet_small", choices=["resnet_small", "cnn"])
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--num-warmup-batches", type=int, default=2)
    parser.add_argument("--num-batches-per-iter", type=int, default=5)
    parser.add_argument("--num-iters", type=int, default=5)
    parser.add_argument("--dist-optimizer", type=str, default="neighbor_allreduce", choices=OPTIMIZERS,
                        help="'local' trains without any communication (the baseline)")
    parser.add_argument("--atc-style", action="store_true", default=False)
    parser.add_argument("--disable-dynamic-topology", action="store_true", default=False)
    parser.add_argument("--no-cuda", action="store_true", default=False)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A ResNet for small images: a stem, then three stages of two basic blocks."""

    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width]):
            layers += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SimpleCNN(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_optimizer(model, args):
    base = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    name = args.dist_optimizer
    if name == "local":
        return base
    if name == "gradient_allreduce":
        return bf.DistributedGradientAllreduceOptimizer(base, model)
    if name == "win_put":
        return bf.DistributedWinPutOptimizer(base, model)
    if name == "pull_get":
        return DistributedPullGetOptimizer(base, model)
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
        bf.set_machine_topology(topology_util.ExponentialGraph(bf.machine_size()))
    factory = bf.DistributedAdaptThenCombineOptimizer if args.atc_style else bf.DistributedAdaptWithCombineOptimizer
    return factory(base, model, communication_type=comm)


def dynamic_updater(optimizer, args):
    if args.disable_dynamic_topology or bf.size() == 1 or args.dist_optimizer != "neighbor_allreduce":
        return None
    schedule = topology_util.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), bf.rank())

    def update():
        send, recv = next(schedule)
        optimizer.self_weight = 1.0 / (len(recv) + 1)
        optimizer.src_weights = {r: 1.0 / (len(recv) + 1) for r in recv}
        optimizer.dst_weights = {r: 1.0 for r in send}
    return update


def main():
    args = parse_args()
    bf.init()
    if "OMP_NUM_THREADS" not in os.environ:
        # Ranks that share a machine share its cores: one thread pool per core, not per rank.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // bf.local_size()))
    device = "cpu"
    if not args.no_cuda and torch.cuda.is_available():
        # One GPU per rank of this machine (ranks beyond the GPU count share them).
        torch.cuda.set_device(bf.local_rank() % torch.cuda.device_count())
        device = "cuda"
    torch.manual_seed(args.seed)
    model = (ResNetSmall(args.num_classes) if args.model == "resnet_small" else SimpleCNN(args.num_classes)).to(device)
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = make_optimizer(model, args)
    bf.broadcast_optimizer_state(optimizer, root_rank=0)
    update = dynamic_updater(optimizer, args)

    data = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

    def benchmark_step():
        if update is not None:
            update()
        optimizer.zero_grad()
        F.cross_entropy(model(data), target).backward()
        optimizer.step()

    def log(s):
        if bf.rank() == 0:
            print(s, flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {args.model} ({n_params / 1e6:.2f} M parameters), batch size {args.batch_size} per rank, "
        f"{bf.size()} ranks, {args.dist_optimizer}" + (" (ATC)" if args.atc_style else ""))
    log("Running warmup...")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    log("Running benchmark...")
    img_secs = []
    for i in range(args.num_iters):
        seconds = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_sec = args.batch_size * args.num_batches_per_iter / seconds
        log(f"Iter #{i}: {img_sec:.1f} img/sec per rank")
        img_secs.append(img_sec)

    mean = float(np.mean(img_secs))
    conf = float(1.96 * np.std(img_secs))
    print(f"rank {bf.rank()}: {mean:.1f} +-{conf:.1f} img/sec", flush=True)
    all_means = bf.allgather(torch.tensor([mean], dtype=torch.double), name="img_secs")
    if hasattr(optimizer, "unregister_window"):
        optimizer.unregister_window()
    log(f"Img/sec per rank: {all_means.mean().item():.1f} (min {all_means.min().item():.1f}, "
        f"max {all_means.max().item():.1f}; rank 0 +-{conf:.1f})")
    log(f"Total img/sec on {bf.size()} rank(s): {all_means.sum().item():.1f}")


if __name__ == "__main__":
    main()

"""Train a small CNN on scikit-learn's handwritten digits (8x8) across ranks.

Each rank trains on its own shard of the training set. After every backward
pass the ranks average their gradients with bf.allreduce (nonblocking, one op
per parameter, so the core fuses them); parameters start identical through
bf.broadcast_. Rank 0 prints the test accuracy.

    bfrun -np 4 python examples/pytorch_digits.py
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import bluefog.torch as bf


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    bf.init()
    torch.manual_seed(args.seed)
    x_train, x_test, y_train, y_test = load_digits_split(args.seed)
    # Each rank its own shard.
    x_train, y_train = x_train[bf.rank()::bf.size()], y_train[bf.rank()::bf.size()]
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)

    model = Net()
    for name, p in model.named_parameters():
        bf.broadcast_(p.data, root_rank=0, name="init." + name)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    start = time.time()
    steps_per_epoch = int(np.ceil(len(x_train) / args.batch_size))
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size:(step + 1) * args.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            handles = [bf.allreduce_nonblocking_(p.grad, average=True, name="grad." + name)
                       for name, p in model.named_parameters()]
            for h in handles:
                bf.synchronize(h)
            optimizer.step()
            total_loss += loss.item()
        avg_loss = bf.allreduce(torch.tensor(total_loss / steps_per_epoch), name="loss").item()
        if bf.rank() == 0:
            print(f"epoch {epoch + 1:2d}  mean training loss {avg_loss:.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(dim=1)
        accuracy = (pred == torch.from_numpy(y_test)).float().mean()
    # Every rank holds the same model; average anyway to show agreement.
    accuracy = bf.allreduce(accuracy, name="accuracy").item()
    if bf.rank() == 0:
        print(f"test accuracy {accuracy:.4f} on {len(y_test)} images "
              f"({bf.size()} ranks, {time.time() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()

"""Train a Keras 3 MLP with model.fit on scikit-learn's handwritten digits across ranks.

Each rank fits on its own shard of the training set. bf.DistributedOptimizer
averages the gradients across ranks at every step; the callbacks make every
rank start from rank 0's weights, warm the learning rate up from lr/size to
lr (the learning rate is scaled by the number of ranks, whose gradients form
one larger batch), and average the epoch metrics across ranks. Rank 0 prints
the test accuracy.

    bfrun -np 4 python examples/keras_digits.py
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import bluefog.tensorflow as bf  # noqa: E402
from bluefog.tensorflow.keras import callbacks as bfc  # noqa: E402


def load_digits_split(seed):
    """The digits data set that ships with scikit-learn, split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # N x 64 in [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def build_model():
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])


def train(epochs=10, batch_size=16, lr=0.0005, warmup_epochs=2, seed=42, verbose=0):
    """Trains on this rank's shard and returns (test accuracy, history)."""
    bf.init()
    # Different seeds on purpose: BroadcastGlobalVariablesCallback makes the start identical.
    keras.utils.set_random_seed(seed + bf.rank())
    x_train, x_test, y_train, y_test = load_digits_split(seed)
    # Equal shards: every rank takes the same number of steps per epoch (each step
    # allreduces the gradients; a rank with one more batch would wait for the others).
    per_rank = len(x_train) // bf.size()
    x_train, y_train = x_train[bf.rank()::bf.size()][:per_rank], y_train[bf.rank()::bf.size()][:per_rank]

    model = build_model()
    scaled_lr = lr * bf.size()
    optimizer = bf.DistributedOptimizer(keras.optimizers.Adam(learning_rate=scaled_lr))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [
        bfc.BroadcastGlobalVariablesCallback(root_rank=0),
        bfc.MetricAverageCallback(),
        bfc.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=warmup_epochs,
                                       verbose=verbose),
    ]
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, callbacks=callbacks,
                        verbose=verbose if bf.rank() == 0 else 0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return float(accuracy), history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--lr", type=float, default=0.0005, help="per rank; scaled by the number of ranks")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    start = time.time()
    accuracy, _ = train(args.epochs, args.batch_size, args.lr, args.warmup_epochs, args.seed,
                        verbose=2)
    if bf.rank() == 0:
        print(f"ranks {bf.size()}: test accuracy {accuracy:.4f} after {args.epochs} epochs "
              f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()

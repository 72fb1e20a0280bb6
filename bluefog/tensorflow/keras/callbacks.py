"""Keras 3 callbacks for data-parallel training with BlueFog, with the
behaviour Horovod users know: variable broadcast, metric averaging, learning
rate warmup and schedules.

Put MetricAverageCallback before callbacks that read epoch metrics (e.g.
ReduceLROnPlateau, ModelCheckpoint, CSVLogger) so they see averaged values.
"""
import numbers

import keras
import numpy as np
import tensorflow as tf

from bluefog.common.basics import get_basics
from bluefog.tensorflow.mpi_ops import allreduce
from bluefog.tensorflow.training import broadcast_variables

_basics = get_basics()


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """Makes every rank start from root_rank's model and optimizer state.

    At the start of training, if every layer of the model is built on every
    rank, it builds the optimizer where it is not built yet (so that a rank that restored a
    checkpoint, whose optimizer is built, and a fresh rank broadcast the same
    variables) and broadcasts the model's and the optimizer's variables. A
    model built lazily by its first step (no Input) is broadcast after the
    first batch instead, when every rank has built it (so is a model that only
    some ranks built before fit, e.g. to restore weights). Runs once per callback
    object.
    """

    def __init__(self, root_rank: int = 0):
        super().__init__()
        self.root_rank = root_rank
        self.broadcast_done = False

    def _broadcast(self):
        variables = list(self.model.variables)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            if not getattr(optimizer, "built", True) and hasattr(optimizer, "build"):
                optimizer.build(self.model.trainable_variables)
            variables += list(optimizer.variables)
        broadcast_variables(variables, self.root_rank, name="bluefog.keras.broadcast_global_variables")
        self.broadcast_done = True

    def _model_built(self) -> bool:
        # Every layer, not just "has variables": a Dropout layer's seed state
        # exists before the Dense layers around it are built.
        layers = getattr(self.model, "_flatten_layers", None)
        if layers is None:
            return bool(getattr(self.model, "built", False))
        return all(getattr(layer, "built", True) for layer in layers())

    def _built_everywhere(self) -> bool:
        # Ranks must choose the same moment: a root that built its model before
        # fit (e.g. to restore weights) while the others build it lazily would
        # otherwise broadcast while they wait in their first step's allreduce.
        built = 1.0 if self._model_built() else 0.0
        count = allreduce(tf.constant(built, tf.float64), average=False,
                          name="bluefog.keras.broadcast_global_variables.built")
        return float(count.numpy()) == _basics.size()

    def on_train_begin(self, logs=None):
        if not self.broadcast_done and self._built_everywhere():
            self._broadcast()

    def on_train_batch_end(self, batch, logs=None):
        if not self.broadcast_done:
            self._broadcast()


class MetricAverageCallback(keras.callbacks.Callback):
    """Replaces each numeric epoch metric in `logs` (loss, accuracy, val_*, ...)
    by its average over all ranks at the end of every epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        for key in sorted(logs):
            value = logs[key]
            if isinstance(value, (numbers.Real, np.ndarray, np.generic, tf.Tensor)) and np.size(value) == 1:
                averaged = allreduce(tf.constant(float(np.asarray(value)), tf.float64), average=True,
                                     name=f"bluefog.keras.metric_average.{key}")
                logs[key] = float(averaged.numpy())


def _learning_rate_variable(optimizer):
    lr = getattr(optimizer, "learning_rate", None)
    if lr is None or not hasattr(lr, "assign"):
        raise TypeError("the learning-rate callbacks need an optimizer whose learning_rate is a variable (a float "
                        "learning rate), not a LearningRateSchedule")
    return lr


class LearningRateScheduleCallback(keras.callbacks.Callback):
    """Sets the learning rate to initial_lr * multiplier(epoch) while
    start_epoch <= epoch < end_epoch.

    Args:
        initial_lr: the base learning rate (usually already scaled by size()).
        multiplier: a constant, or a function epoch -> multiplier.
        start_epoch, end_epoch: the epochs the schedule covers (end None: no end).
        staircase: True: adjust at the start of each epoch with the integer
            epoch; False: adjust before every batch with the fractional epoch
            epoch + batch / steps_per_epoch.
        momentum_correction: while the learning rate changes, scale the
            optimizer's momentum by new_lr / old_lr for that batch. Applied only
            when the momentum is a variable: Keras 3 optimizers hold a float
            momentum that their compiled train step has already baked in.
        steps_per_epoch: batches per epoch (default: what model.fit reports).
        verbose: print the learning rate when it changes at an epoch start.
    """

    def __init__(self, initial_lr, multiplier, start_epoch=0, end_epoch=None, staircase=True,
                 momentum_correction=True, steps_per_epoch=None, verbose=0):
        super().__init__()
        self.initial_lr = float(initial_lr)
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.staircase = staircase
        self.momentum_correction = momentum_correction
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self.current_epoch = 0
        self._restore_momentum = None
        self.multiplier = multiplier if callable(multiplier) else (lambda epoch: multiplier)

    def _in_range(self, epoch) -> bool:
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    def _adjust(self, epoch):
        lr = _learning_rate_variable(self.model.optimizer)
        old = float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))
        new = self.initial_lr * float(self.multiplier(epoch))
        lr.assign(new)
        momentum = getattr(self.model.optimizer, "momentum", None)
        if self.momentum_correction and old > 0 and new != old and hasattr(momentum, "assign"):
            self._restore_momentum = float(momentum.numpy())
            momentum.assign(self._restore_momentum * new / old)
        return new

    def on_train_begin(self, logs=None):
        if self.steps_per_epoch is None and not self.staircase:
            self.steps_per_epoch = self.params.get("steps")
            if not self.steps_per_epoch:
                raise ValueError("LearningRateScheduleCallback(staircase=False) needs steps_per_epoch (model.fit "
                                 "did not report the number of steps)")

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch
        if self.staircase and self._in_range(epoch):
            new = self._adjust(epoch)
            if self.verbose and _basics.rank() == 0:
                print(f"Epoch {epoch + 1}: LearningRateScheduleCallback set the learning rate to {new:g}.")

    def on_train_batch_begin(self, batch, logs=None):
        if self.staircase:
            return
        epoch = self.current_epoch + float(batch) / self.steps_per_epoch
        if self._in_range(epoch):
            self._adjust(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._restore_momentum is not None:
            self.model.optimizer.momentum.assign(self._restore_momentum)
            self._restore_momentum = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(np.asarray(_learning_rate_variable(self.model.optimizer).numpy()))


class LearningRateWarmupCallback(LearningRateScheduleCallback):
    """Ramps the learning rate from initial_lr / size() to initial_lr over the
    first warmup_epochs epochs, adjusting before every batch (the "gradual
    warmup" of Goyal et al.): lr = initial_lr / size * (epoch * (size - 1) /
    warmup_epochs + 1) for the fractional epoch, then sets initial_lr. See
    LearningRateScheduleCallback for the other arguments."""

    def __init__(self, initial_lr, warmup_epochs=5, momentum_correction=True, steps_per_epoch=None, verbose=0):
        size = _basics.size()

        def multiplier(epoch):
            return 1.0 / size * (epoch * (size - 1) / warmup_epochs + 1)

        super().__init__(initial_lr, multiplier, start_epoch=0, end_epoch=warmup_epochs, staircase=False,
                         momentum_correction=momentum_correction, steps_per_epoch=steps_per_epoch, verbose=verbose)
        self.warmup_epochs = warmup_epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.warmup_epochs - 1:
            # The last batch ran just below initial_lr; training goes on at initial_lr.
            _learning_rate_variable(self.model.optimizer).assign(self.initial_lr)
            if self.verbose and _basics.rank() == 0:
                print(f"Epoch {epoch + 1}: finished gradual learning rate warmup to {self.initial_lr:g}.")
        super().on_epoch_end(epoch, logs)

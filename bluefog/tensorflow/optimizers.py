"""DistributedOptimizer: averages gradients across ranks before they are applied.

Works with Keras 3 optimizers (model.fit and custom loops) and with legacy
tf.compat.v1.train.Optimizer, through public extension points only:

* Keras 3: a subclass of the optimizer's own class ("Distributed<Name>", one
  per class, registered with Keras's serialization so that a saved model
  loads again), whose `apply` (which `apply_gradients` and model.fit's train
  step call) allreduces the gradients and then calls the class's `apply`. The
  wrapper is rebuilt from `optimizer.get_config()`, so wrap an optimizer
  before training with it (any state it already holds is not carried over).
* tf.compat.v1: a tf.compat.v1.train.Optimizer whose compute_gradients is the
  wrapped optimizer's followed by the allreduce; minimize() uses it.
"""
from typing import Optional

import tensorflow as tf

from bluefog.tensorflow.mpi_ops import _check_device
from bluefog.tensorflow.training import allreduce_gradients


def _keras_optimizer_class():
    try:
        import keras
    except ImportError:  # pragma: no cover - Keras 3 ships with TF >= 2.16
        return None
    return keras.optimizers.Optimizer


def DistributedOptimizer(optimizer, name: Optional[str] = None, use_locking: bool = False, device: str = "", *,
                         average: bool = True, sparse_as_dense: bool = False):
    """Wraps `optimizer` so that gradients are averaged (average=False: summed)
    over all ranks before being applied.

    Args:
        optimizer: a Keras 3 optimizer (keras.optimizers.*) or a
            tf.compat.v1.train.Optimizer. Under Keras's mixed_float16 global
            policy a Keras optimizer is first put in a LossScaleOptimizer (as
            model.compile would do), whose checks then see averaged gradients.
            A LossScaleOptimizer put around the wrapper (by hand, or by
            compile under a policy set after wrapping) is refused with a
            ValueError at the first step: its check would see each rank's own
            gradients, and ranks would skip different steps.
        name: the legacy wrapper's name (default "Distributed<Class>"); for a
            Keras optimizer, the new optimizer's name (default: unchanged).
        use_locking: passed to the legacy Optimizer base class.
        device: accepted for BlueFog 0.3 scripts and ignored.
        average: average (True) or sum the gradients.
        sparse_as_dense: densify tf.IndexedSlices gradients before reducing
            (default: allgather their values and indices).
    Returns:
        An optimizer of the same kind.
    """
    _check_device(device, "DistributedOptimizer")
    keras_base = _keras_optimizer_class()
    if keras_base is not None and isinstance(optimizer, keras_base):
        import keras
        if (keras.mixed_precision.global_policy().name == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            # What model.compile would do, but inside: the loss scale then checks
            # averaged gradients, so every rank skips (or takes) the same steps.
            # (Outside, a rank whose own gradients overflowed skipped the
            # allreduce its peers were waiting in.)
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return _wrap_keras(optimizer, name, average, sparse_as_dense)
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        if isinstance(optimizer, _LegacyDistributedOptimizer):  # reduce once, with these settings
            optimizer = optimizer._optimizer  # pylint: disable=protected-access
        return _LegacyDistributedOptimizer(optimizer, name, use_locking, average, sparse_as_dense)
    raise TypeError("DistributedOptimizer expects a Keras 3 optimizer or a tf.compat.v1.train.Optimizer, got "
                    f"{type(optimizer).__module__}.{type(optimizer).__name__}")


def _wrap_keras(optimizer, name, average, sparse_as_dense):
    # Already distributed (e.g. a loaded model's optimizer): wrap its own kind
    # again, so gradients are reduced once, with these settings.
    cls = keras_wrapper_class(getattr(type(optimizer), "_bluefog_base", type(optimizer)))
    config = optimizer.get_config()
    if name is not None:
        config["name"] = name
    config.update(bluefog_average=bool(average), bluefog_sparse_as_dense=bool(sparse_as_dense))
    return cls.from_config(config)


_WRAPPERS = {}  # the user's optimizer class -> its distributed subclass


def keras_wrapper_class(base):
    """The distributed subclass of Keras optimizer class `base`, named
    "Distributed<Name>" (one per class). Its config adds bluefog_average and
    bluefog_sparse_as_dense, so a model saved with it loads again (with
    keras.models.load_model, in a process that imported bluefog.tensorflow;
    for a user-defined optimizer class, after wrapping one of its kind)."""
    cls = _WRAPPERS.get(base)
    if cls is not None:
        return cls

    def __init__(self, *args, bluefog_average=True, bluefog_sparse_as_dense=False, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._bluefog_average = bool(bluefog_average)
        self._bluefog_sparse_as_dense = bool(bluefog_sparse_as_dense)

    def get_config(self):
        config = base.get_config(self)
        config.update(bluefog_average=self._bluefog_average, bluefog_sparse_as_dense=self._bluefog_sparse_as_dense)
        return config

    def apply(self, grads, trainable_variables=None):
        if not getattr(self, "_bluefog_outer_checked", False):
            _refuse_outer_loss_scale(self)
            self._bluefog_outer_checked = True
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        variables = trainable_variables if trainable_variables is not None else \
            getattr(self, "_trainable_variables", None)
        if variables is not None and len(list(variables)) != len(grads):
            variables = None
        grads = allreduce_gradients(grads, average=self._bluefog_average,
                                    sparse_as_dense=self._bluefog_sparse_as_dense, sources=variables)
        return base.apply(self, grads, trainable_variables)

    apply.__doc__ = f"Allreduces the gradients across ranks, then {base.__name__}.apply."
    name = "Distributed" + base.__name__
    cls = type(name, (base,), {
        "__init__": __init__,
        "get_config": get_config,
        "apply": apply,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{base.__name__} whose gradients are averaged across BlueFog ranks.",
        "_bluefog_wrapped": True,
        "_bluefog_base": base,
    })
    import keras
    keras.saving.register_keras_serializable(package="bluefog", name=name)(cls)
    if base.__module__.startswith("keras.") and name not in globals():
        globals()[name] = cls  # where Keras also looks for a saved object's class
    _WRAPPERS[base] = cls
    return cls


def _refuse_outer_loss_scale(optimizer):
    """ValueError if a LossScaleOptimizer calls `optimizer` (the distributed
    wrapper) as its inner optimizer: its overflow check would see this rank's
    own gradients, so a rank whose gradients overflowed would skip the step
    (and the allreduce) that the others take, and the job would hang. Looked
    up on the calling frames, once (model.compile puts one outside under a
    mixed_float16 policy set after the wrapper was made, or a model dtype)."""
    import sys
    import keras
    outer_class = keras.optimizers.LossScaleOptimizer
    frame, depth = sys._getframe(2), 0
    while frame is not None and depth < 40:
        outer = frame.f_locals.get("self")
        if isinstance(outer, outer_class) and outer is not optimizer and \
                getattr(outer, "inner_optimizer", None) is optimizer:
            raise ValueError(
                f"DistributedOptimizer: {type(optimizer).__name__} is the inner optimizer of a LossScaleOptimizer, "
                "whose overflow check would see each rank's own gradients: a rank that overflowed would skip the "
                "gradient allreduce the others wait in. Set the mixed precision policy before wrapping "
                "(keras.mixed_precision.set_global_policy('mixed_float16'), then bf.DistributedOptimizer(opt): "
                "the loss scaling then goes inside and checks averaged gradients), or wrap the other way round: "
                "bf.DistributedOptimizer(keras.optimizers.LossScaleOptimizer(opt)).")
        frame, depth = frame.f_back, depth + 1


def _register_builtin_wrappers():
    """Makes the wrappers of Keras's own optimizers now, so that a saved model
    loads in a process that only imported bluefog.tensorflow."""
    base = _keras_optimizer_class()
    if base is None:  # pragma: no cover
        return
    import keras
    for attr in dir(keras.optimizers):
        value = getattr(keras.optimizers, attr)
        if (isinstance(value, type) and issubclass(value, base) and value is not base
                and value is not getattr(keras.optimizers, "LossScaleOptimizer", None)):
            keras_wrapper_class(value)


_register_builtin_wrappers()


class _LegacyDistributedOptimizer(tf.compat.v1.train.Optimizer):
    """A tf.compat.v1.train.Optimizer whose gradients are allreduced."""

    def __init__(self, optimizer, name, use_locking, average, sparse_as_dense):
        super().__init__(use_locking=use_locking, name=name or "Distributed" + type(optimizer).__name__)
        self._optimizer = optimizer
        self._average = average
        self._sparse_as_dense = sparse_as_dense

    def compute_gradients(self, *args, **kwargs):
        """The wrapped optimizer's (gradient, variable) pairs, gradients allreduced."""
        pairs = self._optimizer.compute_gradients(*args, **kwargs)
        if not pairs:
            return pairs
        grads, variables = zip(*pairs)
        grads = allreduce_gradients(list(grads), average=self._average, sparse_as_dense=self._sparse_as_dense,
                                    sources=list(variables))
        return list(zip(grads, variables))

    def apply_gradients(self, *args, **kwargs):
        """The wrapped optimizer's apply_gradients."""
        return self._optimizer.apply_gradients(*args, **kwargs)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)

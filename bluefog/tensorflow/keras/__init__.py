"""BlueFog for Keras 3 (TensorFlow backend): `import bluefog.tensorflow.keras as bfk`.

Everything of bluefog.tensorflow that Keras training needs (init, size, rank,
DistributedOptimizer, broadcast_variables, ...) plus the callbacks in
`bluefog.tensorflow.keras.callbacks`.
"""
from bluefog.tensorflow import (  # noqa: F401
    init, shutdown, size, rank, local_size, local_rank, allreduce, broadcast, allgather,
    broadcast_variables, DistributedOptimizer, DistributedGradientTape)
from bluefog.tensorflow.keras import callbacks  # noqa: F401
from bluefog.tensorflow.keras.callbacks import (  # noqa: F401
    BroadcastGlobalVariablesCallback, MetricAverageCallback, LearningRateScheduleCallback,
    LearningRateWarmupCallback)

"""BlueFog for TensorFlow (and Keras 3): `import bluefog.tensorflow as bf`.

Shares one core with bluefog.torch: init, topology and the op queue are the
same whichever frontend a process imports (both re-export one basics object).
"""
from bluefog.common.native import REBUILD_HINT, find_library as _find_library
import os as _os

if _find_library(_os.path.dirname(_os.path.abspath(__file__)), "_ops") is None:
    raise ImportError("The BlueFog TensorFlow ops (bluefog/tensorflow/_ops*.so) have not been built (BlueFog was "
                      "built without TensorFlow, or with BLUEFOG_WITH_TENSORFLOW=0). Install tensorflow, then "
                      "rebuild with BLUEFOG_WITH_TENSORFLOW=1. " + REBUILD_HINT)

import tensorflow as _tf  # noqa: E402,F401  (load TensorFlow's libraries before the op library)

from bluefog.common.basics import export_basics as _export_basics  # noqa: E402
from bluefog.common.topology_util import (  # noqa: E402,F401
    ExponentialTwoGraph, ExponentialGraph, FullyConnectedGraph, MeshGrid2DGraph, RingGraph, StarGraph,
    SymmetricExponentialGraph, GetRecvWeights, GetSendWeights, IsRegularGraph, IsTopologyEquivalent)
from bluefog.tensorflow.mpi_ops import (  # noqa: E402,F401
    allreduce, grouped_allreduce, broadcast, allgather, barrier)
from bluefog.tensorflow.neighbor_ops import (  # noqa: E402,F401
    neighbor_allreduce, neighbor_allgather, hierarchical_neighbor_allreduce)
from bluefog.tensorflow.training import (  # noqa: E402,F401
    broadcast_variables, allreduce_gradients, DistributedGradientTape)
from bluefog.tensorflow.optimizers import DistributedOptimizer  # noqa: E402,F401

_export_basics(globals())  # init, size, rank, topology, timeline, ... (shared instance)

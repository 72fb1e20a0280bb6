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

from bluefog.common.basics import get_basics as _get_basics  # noqa: E402
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

_basics = _get_basics()
init = _basics.init
shutdown = _basics.shutdown
is_initialized = _basics.is_initialized
size = _basics.size
rank = _basics.rank
local_size = _basics.local_size
local_rank = _basics.local_rank
machine_size = _basics.machine_size
machine_rank = _basics.machine_rank
is_homogeneous = _basics.is_homogeneous
is_topo_weighted = _basics.is_topo_weighted
is_machine_topo_weighted = _basics.is_machine_topo_weighted
mpi_threads_supported = _basics.mpi_threads_supported
unified_mpi_window_model_supported = _basics.unified_mpi_window_model_supported
nccl_built = _basics.nccl_built
load_topology = _basics.load_topology
set_topology = _basics.set_topology
in_neighbor_ranks = _basics.in_neighbor_ranks
out_neighbor_ranks = _basics.out_neighbor_ranks
load_machine_topology = _basics.load_machine_topology
set_machine_topology = _basics.set_machine_topology
in_neighbor_machine_ranks = _basics.in_neighbor_machine_ranks
out_neighbor_machine_ranks = _basics.out_neighbor_machine_ranks
timeline_start_activity = _basics.timeline_start_activity
timeline_end_activity = _basics.timeline_end_activity
timeline_context = _basics.timeline_context

"""BlueFog for PyTorch: `import bluefog.torch as bf`."""
from bluefog.common.native import REBUILD_HINT, find_library as _find_library
import os as _os

if _find_library(_os.path.dirname(_os.path.abspath(__file__)), "_C") is None:
    raise ImportError("Extension bluefog.torch has not been built (BlueFog was built without PyTorch). "
                      + REBUILD_HINT)

import torch as _torch  # noqa: E402,F401  (load torch's libraries before the extension)

from bluefog.common.basics import export_basics as _export_basics  # noqa: E402
from bluefog.common.topology_util import (  # noqa: E402,F401
    ExponentialTwoGraph, ExponentialGraph, FullyConnectedGraph, MeshGrid2DGraph, RingGraph, StarGraph,
    SymmetricExponentialGraph, GetRecvWeights, GetSendWeights, IsRegularGraph, IsTopologyEquivalent,
    GetDynamicOnePeerSendRecvRanks, GetExp2DynamicSendRecvMachineRanks,
    GetInnerOuterRingDynamicSendRecvRanks, GetInnerOuterExpo2DynamicSendRecvRanks)
from bluefog.torch.mpi_ops import (  # noqa: E402,F401
    allreduce, allreduce_, allreduce_nonblocking, allreduce_nonblocking_,
    broadcast, broadcast_, broadcast_nonblocking, broadcast_nonblocking_,
    allgather, allgather_nonblocking,
    poll, synchronize, wait, barrier)
from bluefog.torch.win_ops import (  # noqa: E402,F401
    win_create, win_free, win_put, win_put_nonblocking, win_get, win_get_nonblocking, win_accumulate,
    win_accumulate_nonblocking, neighbor_win_put, neighbor_win_put_nonblocking, neighbor_win_get,
    neighbor_win_get_nonblocking, neighbor_win_accumulate, neighbor_win_accumulate_nonblocking,
    win_poll, win_wait, win_update, win_update_then_collect, get_win_version, get_current_created_window_names,
    win_mutex, win_associated_p, turn_on_win_ops_with_associated_p, turn_off_win_ops_with_associated_p)
from bluefog.torch.utility import (  # noqa: E402,F401
    broadcast_parameters, allreduce_parameters, broadcast_optimizer_state)
from bluefog.torch.optimizers import (  # noqa: E402,F401
    CommunicationType, DistributedAdaptWithCombineOptimizer, DistributedAdaptThenCombineOptimizer,
    DistributedGradientAllreduceOptimizer, DistributedWinPutOptimizer, DistributedPullGetOptimizer,
    DistributedPushSumOptimizer, DistributedAllreduceOptimizer, DistributedNeighborAllreduceOptimizer,
    DistributedHierarchicalNeighborAllreduceOptimizer)
from bluefog.torch.topology_util import (  # noqa: E402,F401
    InferSourceFromDestinationRanks, InferDestinationFromSourceRanks)
from bluefog.torch.neighbor_ops import (  # noqa: E402,F401
    neighbor_allreduce, neighbor_allreduce_nonblocking, neighbor_allgather, neighbor_allgather_nonblocking,
    hierarchical_neighbor_allreduce, hierarchical_neighbor_allreduce_nonblocking,
    pair_gossip, pair_gossip_nonblocking)
from bluefog.torch import win_ops as _win_ops  # noqa: E402
win_lock = _win_ops.win_lock

_export_basics(globals())  # init, size, rank, topology, timeline, ... (shared instance)

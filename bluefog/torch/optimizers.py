"""Distributed optimizers: wrap a torch optimizer so that training is
decentralized (neighbor averaging of parameters), or Horovod-style.

Each factory returns an object whose class inherits from the user's optimizer
class (isinstance, state_dict, param_groups and lr schedulers keep working),
built from the optimizer's param_groups. With one rank no hooks are
registered and the wrapper behaves like the plain optimizer.
"""
import contextlib
import os
import warnings
import weakref
import zlib
from enum import Enum
from typing import Dict, List, Optional

import torch

from bluefog.common.basics import get_basics
from bluefog.torch import mpi_ops, neighbor_ops, win_ops

_basics = get_basics()


class CommunicationType(Enum):
    neighbor_allreduce = "neighbor.allreduce"
    hierarchical_neighbor_allreduce = "hierarchical.neighbor.allreduce"
    allreduce = "allreduce"
    empty = "empty"


def _named_parameters(model, optimizer) -> Dict[torch.nn.Parameter, str]:
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    named = []
    for i, m in enumerate(models):
        if not isinstance(m, torch.nn.Module):
            raise ValueError(f"model must be an nn.Module or a list of them, got {type(m).__name__}")
        prefix = f"{i}." if len(models) > 1 else ""
        named += [(prefix + n, p) for n, p in m.named_parameters()]
    names = [n for n, _ in named]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"duplicate parameter names in the model: {dups}")
    by_param = {}
    for n, p in named:
        if p in by_param:
            raise ValueError(f"the same parameter appears twice, as '{by_param[p]}' and '{n}' (a model given twice, "
                             "or a model together with one of its submodules?)")
        by_param[p] = n
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p not in by_param:
                raise ValueError(f"the optimizer has a parameter of shape {tuple(p.shape)} that is not among the "
                                 "model's named_parameters(); pass the model (or list of models) that owns it")
    return by_param


# How many wrappers this process has built per op-name prefix. Each wrapper names
# its ops "<prefix>.<parameter name>"; two wrappers of models with the same
# parameter names (a GAN's two nets, say) must not share names while both have
# ops in flight, so the n-th wrapper with a prefix uses "<prefix>#n". A count of
# constructions, not of live wrappers: when a wrapper is freed can differ between
# ranks (whenever a program's own reference cycles hold it), the order in which
# wrappers are built cannot (their ops need that already).
_PREFIX_COUNTS: Dict[str, int] = {}
_BARE_WINDOWS = "#bare windows"  # its key there for window wrappers built without a window_prefix


def _next_prefix(prefix: str) -> str:
    """``prefix`` for its first wrapper (BlueFog 0.3's op names), ``prefix#n`` for the n-th."""
    n = _PREFIX_COUNTS.get(prefix, 0)
    _PREFIX_COUNTS[prefix] = n + 1
    return prefix if n == 0 else f"{prefix}#{n}"


class _Distributed:
    """Bookkeeping shared by the wrappers (mixed in before the user's class)."""

    def _bf_setup(self, model, num_steps_per_communication, prefix):
        if not isinstance(num_steps_per_communication, int) or num_steps_per_communication < 1:
            raise ValueError(f"num_steps_per_communication must be a positive int, got {num_steps_per_communication!r}")
        self._bf_names = _named_parameters(model, self)
        self._bf_models = list(model) if isinstance(model, (list, tuple)) else [model]
        self._bf_prefix = _next_prefix(prefix)
        self._bf_steps = num_steps_per_communication
        self._bf_counts: Dict[torch.nn.Parameter, int] = {}
        self._bf_handles: Dict[torch.nn.Parameter, int] = {}
        self._bf_hooks = []
        self._bf_should_sync = True
        self._bf_warned = False
        self._bf_timeline = False
        self._bf_timeline_hooks = []
        self._bf_open: Dict[torch.nn.Parameter, str] = {}  # parameter -> activity open in its lane
        self._bf_active = _basics.size() > 1
        # Per model: its parameters of this wrapper, and each one's owning module.
        self._bf_owner = {q: module for m in self._bf_models for module in m.modules()
                          for q in module.parameters(recurse=False) if q in self._bf_names}
        self._bf_model_params = [[q for q in m.parameters() if q in self._bf_names] for m in self._bf_models]
        self._bf_seen = set()  # parameters already handled in the current model forward
        self._bf_in_forward = set()  # the models whose forward is running
        if self._bf_active:
            self._bf_check_models_agree()
        if os.environ.get("BLUEFOG_TIMELINE"):
            self.turn_on_timeline()

    def _bf_check_models_agree(self):
        """Collective: every rank's wrapper must see the same parameters (names,
        shapes, dtypes), or the ranks' ops would never pair up (a hang)."""
        def shape(q):  # a lazy module's parameter has no shape before its first forward
            return "lazy" if isinstance(q, torch.nn.parameter.UninitializedParameter) else tuple(q.shape)
        described = ";".join(f"{n}:{shape(q)}:{q.dtype}:{int(q.requires_grad)}"
                             for q, n in sorted(self._bf_names.items(), key=lambda kv: kv[1]))
        mine = torch.tensor([[len(self._bf_names), zlib.crc32(described.encode())]], dtype=torch.int64)
        every = mpi_ops.allgather(mine, name=f"{self._bf_prefix}.model_check")
        if bool((every == every[0]).all()):
            return
        groups: Dict[tuple, List[int]] = {}
        for r, row in enumerate(every.tolist()):
            groups.setdefault(tuple(row), []).append(r)
        text = "; ".join(f"ranks {ranks}: {key[0]} parameters (checksum {key[1]:08x})" for key, ranks in groups.items())
        raise ValueError(f"bluefog distributed optimizer (wrapping {type(self).__name__}): the ranks' models differ "
                         f"in their parameters' names, shapes, dtypes or requires_grad ({text}); every rank must "
                         f"wrap the same model")

    def _bf_name(self, p) -> str:
        return f"{self._bf_prefix}.{self._bf_names[p]}"

    def _bf_due(self, p) -> bool:
        """Counts a use of p; True when it is time to communicate it."""
        self._bf_counts[p] = self._bf_counts.get(p, 0) + 1
        if self._bf_counts[p] % self._bf_steps != 0:
            return False
        if p in self._bf_handles:
            if not self._bf_warned:
                warnings.warn("Unexpected behavior: a parameter was used again before its previous communication "
                              "was synchronized (more forward/backward passes per step() than "
                              "num_steps_per_communication allows); the extra communication is skipped.")
                self._bf_warned = True
            return False
        return True

    def _bf_weak(self, method_name):
        # Hooks hold the optimizer weakly: no model <-> optimizer reference cycle,
        # so a wrapper is destroyed (and its windows freed, collectively) when
        # the program drops it — at the same point on every rank — rather than
        # whenever each rank's cyclic garbage collector happens to run.
        ref = weakref.ref(self)

        def call(*args):
            target = ref()
            if target is not None:
                getattr(target, method_name)(*args)
        return call

    def _bf_modules(self):
        """The modules that directly hold parameters of this wrapper."""
        for m in self._bf_models:
            for module in m.modules():
                if any(p in self._bf_names for p in module.parameters(recurse=False)):
                    yield module

    def _bf_register_forward_hooks(self):
        """`self._bf_forward(params)` runs for the parameters of each module as its
        forward ends (so communication overlaps the rest of the forward), once
        per parameter and model forward (a module called twice counts once),
        and, when the model's forward ends, for the parameters whose module
        did not run (nn.ParameterList, tied weights, a branch this rank skipped):
        every parameter communicates once per model forward, on every rank."""
        module_done, model_begin, model_done = (self._bf_weak(m) for m in (
            "_bf_module_forward_done", "_bf_model_forward_begin", "_bf_model_forward_done"))
        for module in self._bf_modules():
            self._bf_hooks.append(module.register_forward_hook(lambda mod, inp, out: module_done(mod)))
        for i, m in enumerate(self._bf_models):
            self._bf_hooks.append(m.register_forward_pre_hook(lambda mod, inp, i=i: model_begin(i)))
            self._bf_hooks.append(m.register_forward_hook(lambda mod, inp, out, i=i: model_done(i)))

    def _bf_module_forward_done(self, module):
        if not module.training:
            return
        params = self._bf_module_params(module)
        if self._bf_in_forward:  # inside a model's forward: once per parameter
            params = [q for q in params if q not in self._bf_seen]
            self._bf_seen.update(params)
        self._bf_forward(params)

    def _bf_model_forward_begin(self, i):
        self._bf_in_forward.add(i)
        self._bf_seen.clear()

    def _bf_model_forward_done(self, i):
        # (Submodules called directly, outside a model forward, communicate per call.)
        self._bf_in_forward.discard(i)
        rest = [q for q in self._bf_model_params[i]
                if q not in self._bf_seen and q.requires_grad and self._bf_owner[q].training]
        self._bf_seen.clear()
        self._bf_forward(rest)

    def _bf_module_params(self, module):
        return [p for p in module.parameters(recurse=False) if p in self._bf_names and p.requires_grad]

    def turn_on_timeline(self):
        """Record each parameter's FORWARD (its module's forward pass) and
        GRADIENT COMPT. (from the end of that forward pass until its gradient
        is ready) activities in the timeline, in the lane of the parameter's
        communication ops (on when BLUEFOG_TIMELINE is set as the wrapper is
        built; the timeline itself must be on, see bluefog.timeline_start_activity)."""
        if self._bf_timeline:
            return
        self._bf_timeline = True
        pre, post, grad = (self._bf_weak(m) for m in ("_bf_tl_forward_begin", "_bf_tl_forward_end", "_bf_tl_grad"))
        for module in self._bf_modules():
            self._bf_timeline_hooks.append(module.register_forward_pre_hook(lambda mod, inp: pre(mod)))
            self._bf_timeline_hooks.append(module.register_forward_hook(lambda mod, inp, out: post(mod)))
        for p in self._bf_names:
            if p.requires_grad:
                self._bf_timeline_hooks.append(p.register_post_accumulate_grad_hook(grad))

    def turn_off_timeline(self):
        """Stop recording the activities of turn_on_timeline (open ones are ended)."""
        for h in self._bf_timeline_hooks:
            h.remove()
        self._bf_timeline_hooks = []
        self._bf_timeline = False
        for p in list(self._bf_open):
            self._bf_tl_end(p)

    def _bf_tl_begin(self, p, activity):
        if p not in self._bf_open and _basics.timeline_start_activity(self._bf_name(p), activity):
            self._bf_open[p] = activity

    def _bf_tl_end(self, p, activity=None):
        if p in self._bf_open and (activity is None or self._bf_open[p] == activity):
            del self._bf_open[p]
            _basics.timeline_end_activity(self._bf_name(p))

    def _bf_tl_forward_begin(self, module):
        for p in self._bf_module_params(module):
            self._bf_tl_begin(p, "FORWARD")

    def _bf_tl_forward_end(self, module):
        backward = module.training and torch.is_grad_enabled()
        for p in self._bf_module_params(module):
            self._bf_tl_end(p, "FORWARD")
            if backward:
                self._bf_tl_begin(p, "GRADIENT COMPT.")

    def _bf_tl_grad(self, p):
        self._bf_tl_end(p, "GRADIENT COMPT.")

    def _bf_take_handles(self):
        """The pending (parameter, handle) pairs, forgotten here first: a
        failed op leaves nothing to wait for again."""
        handles = list(self._bf_handles.items())
        self._bf_handles.clear()
        return handles

    def _bf_missing(self):
        """When this rank communicates now (some parameter did), the parameters
        that did not (no forward / no gradient here: a branch this rank
        skipped): the caller communicates them too, so that no rank waits for
        them. Their use counts are aligned with the others'."""
        if not self._bf_active or not self._bf_hooks or not self._bf_handles:
            return []  # (no hooks: unregister_hooks() stopped the communication)
        count = self._bf_counts.get(next(iter(self._bf_handles)), 0)
        missing = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and p in self._bf_names and p not in self._bf_handles:
                    self._bf_counts[p] = count
                    missing.append(p)
        return missing

    @contextlib.contextmanager
    def skip_synchronize(self):
        """step() inside this block does not synchronize (call synchronize() first)."""
        self._bf_should_sync = False
        try:
            yield
        finally:
            self._bf_should_sync = True

    # Whether the communication started before step() carries gradients (then
    # zero_grad() while it is pending is a mistake), or only parameters.
    _bf_communicates_gradients = False

    def zero_grad(self, set_to_none: bool = True):
        if self._bf_handles and self._bf_communicates_gradients:
            raise AssertionError("zero_grad() was called while communication is still pending; call step() (or "
                                 "synchronize()) first")
        # (Parameters in flight are not touched: `loss = model(x); opt.zero_grad();
        # loss.backward(); opt.step()` works with the forward-started wrappers, as in 0.3.)
        return super().zero_grad(set_to_none=set_to_none)

    def unregister_hooks(self):
        for h in self._bf_hooks:
            h.remove()
        self._bf_hooks = []
        self.turn_off_timeline()


class _AdaptWithCombine(_Distributed):
    def __init__(self, params, model, communication_type, num_steps_per_communication, prefix="awc"):
        super().__init__(params)
        self._bf_setup(model, num_steps_per_communication, prefix)
        self.communication_type = communication_type  # checked by the property
        self.self_weight = None
        self.src_weights = None
        self.dst_weights = None
        self.src_machine_weights = None
        self.dst_machine_weights = None
        self.enable_topo_check = False
        if self._bf_active:
            self._bf_register_forward_hooks()

    def _bf_communicate(self, tensor, name):
        ct = self.communication_type
        if ct == CommunicationType.neighbor_allreduce:
            return neighbor_ops.neighbor_allreduce_nonblocking(
                tensor, self_weight=self.self_weight, src_weights=self.src_weights, dst_weights=self.dst_weights,
                enable_topo_check=self.enable_topo_check, name=name)
        if ct == CommunicationType.hierarchical_neighbor_allreduce:
            return neighbor_ops.hierarchical_neighbor_allreduce_nonblocking(
                tensor, self_weight=self.self_weight, src_machine_weights=self.src_machine_weights,
                dst_machine_weights=self.dst_machine_weights, enable_topo_check=self.enable_topo_check, name=name)
        if ct == CommunicationType.allreduce:
            return mpi_ops.allreduce_nonblocking(tensor, average=True, name=name)
        return None

    @property
    def communication_type(self) -> CommunicationType:
        """How parameters are combined (a CommunicationType; settable between steps)."""
        return self._bf_communication_type

    @communication_type.setter
    def communication_type(self, value):
        if not isinstance(value, CommunicationType):
            raise ValueError(f"communication_type must be a CommunicationType, got {value!r}")
        self._bf_communication_type = value

    def _bf_forward(self, params):
        for p in params:
            if self._bf_due(p):
                handle = self._bf_communicate(p.data, self._bf_name(p))
                if handle is not None:
                    self._bf_handles[p] = handle

    def synchronize(self):
        """Waits for the parameters' communication and adopts the combined values
        (a parameter no forward pass reached here communicates now, if others did)."""
        for p in self._bf_missing():
            handle = self._bf_communicate(p.data, self._bf_name(p))
            if handle is not None:
                self._bf_handles[p] = handle
        for p, handle in self._bf_take_handles():
            p.data.copy_(mpi_ops.synchronize(handle))

    def step(self, closure=None):
        if self._bf_should_sync:
            self.synchronize()
        if closure is None or not self._bf_active:
            return super().step(closure)

        # The closure's forward starts the communication of the current
        # parameters: adopt the combined values after each evaluation, before
        # the gradient is applied (x <- W x - lr * g(x), as without a closure;
        # an optimizer that re-evaluates, such as LBFGS, combines each time).
        def combined_closure():
            with torch.enable_grad():
                loss = closure()
            self.synchronize()
            return loss
        return super().step(combined_closure)


class _AdaptThenCombine(_AdaptWithCombine):
    _bf_communicates_gradients = True  # (their local steps, taken as they come: as in 0.3, no zero_grad meanwhile)

    def __init__(self, params, model, communication_type, num_steps_per_communication):
        self._bf_step_function = None
        super().__init__(params, model, communication_type, num_steps_per_communication, prefix="atc")
        for h in self._bf_hooks:  # ATC communicates after the local step, not at forward
            h.remove()
        self._bf_hooks = []
        self._bf_group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._bf_group_key = tuple(id(g) for g in self.param_groups)
        self._bf_hooked = set()
        self._bf_stepped = set()  # parameters whose local step a backward hook took
        self._bf_hook_new_params()

    def _bf_hook_new_params(self):
        if not self._bf_active:
            return
        for g in self.param_groups:
            for p in g["params"]:
                if p.requires_grad and p in self._bf_names and p not in self._bf_hooked:
                    self._bf_hooks.append(p.register_post_accumulate_grad_hook(self._bf_weak("_bf_after_grad")))
                    self._bf_hooked.add(p)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_bf_hooked"):  # not during construction
            self._bf_hook_new_params()

    def register_step_function(self, func):
        """func(optimizer, param, grad, group) replaces the per-parameter local step."""
        self._bf_step_function = func

    def _bf_group(self, p):
        # load_state_dict replaces the group dicts: map again when they change.
        key = tuple(id(g) for g in self.param_groups)
        if self._bf_group_key != key:
            self._bf_group_of = {q: g for g in self.param_groups for q in g["params"]}
            self._bf_group_key = key
        return self._bf_group_of[p]

    def _bf_local_step(self, p):
        group = self._bf_group(p)
        if self._bf_step_function is not None:
            self._bf_step_function(self, p, p.grad, group)
            return
        saved = self.param_groups
        alone = dict(group, params=[p])
        self.param_groups = [alone]
        try:
            super(_AdaptWithCombine, self).step()
        finally:
            self.param_groups = saved
        # An optimizer that keeps state in its param group (a step count, say)
        # would lose it here, or count once per parameter: refuse instead.
        changed = sorted(k for k in alone if k != "params" and (k not in group or alone[k] is not group[k]))
        if changed:
            raise ValueError(
                f"DistributedAdaptThenCombineOptimizer: {type(self).__name__}.step() changed its param group "
                f"({', '.join(repr(k) for k in changed)}); adapt-then-combine steps each parameter on its own, "
                "which cannot reproduce that. Give the per-parameter step with register_step_function(func) "
                "(func(optimizer, param, grad, group)), as in BlueFog 0.3")

    def _bf_after_grad(self, p):
        # The local step waits for the communicating backward pass (the
        # num_steps_per_communication-th): gradients accumulated over several
        # backward passes are applied once, from the point they were taken at.
        if not self._bf_due(p):
            return
        with torch.no_grad():
            self._bf_local_step(p)
        self._bf_stepped.add(p)
        handle = self._bf_communicate(p.data, self._bf_name(p))
        if handle is not None:
            self._bf_handles[p] = handle

    def step(self, closure=None):
        if not self._bf_active:
            return super(_AdaptWithCombine, self).step(closure)
        if closure is not None:
            raise ValueError("DistributedAdaptThenCombineOptimizer does not support a closure")
        # Parameters whose backward pass did not communicate this time (step()
        # after every backward with num_steps_per_communication > 1) take
        # their local step now.
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p not in self._bf_stepped:
                        self._bf_local_step(p)
        self._bf_stepped.clear()
        if self._bf_should_sync:
            self.synchronize()
        return None


class _GradientAllreduce(_Distributed):
    _bf_communicates_gradients = True

    def __init__(self, params, model, num_steps_per_communication):
        super().__init__(params)
        self._bf_setup(model, num_steps_per_communication, "grad")
        if self._bf_active:
            for p in self._bf_names:
                if p.requires_grad:
                    self._bf_hooks.append(p.register_post_accumulate_grad_hook(self._bf_weak("_bf_after_grad")))

    def _bf_after_grad(self, p):
        if self._bf_due(p):
            self._bf_handles[p] = mpi_ops.allreduce_nonblocking(p.grad, average=True, name=self._bf_name(p))

    def synchronize(self):
        """Waits for the gradient averages and installs them in p.grad. When
        this rank communicates, a parameter that got no gradient here (a layer
        this rank skipped) is averaged as zeros, so that no rank waits for it."""
        filled = []
        for p in self._bf_missing():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
                filled.append(p)
            self._bf_handles[p] = mpi_ops.allreduce_nonblocking(p.grad, average=True, name=self._bf_name(p))
        for p, handle in self._bf_take_handles():
            p.grad.copy_(mpi_ops.synchronize(handle))
        for p in filled:  # no rank had a gradient (all zeros came back): none, as torch leaves it
            if not p.grad.any():
                p.grad = None

    def step(self, closure=None):
        if self._bf_should_sync:
            self.synchronize()
        if closure is None or not self._bf_active:
            return super().step(closure)

        # An optimizer that re-evaluates the loss (LBFGS) gets averaged gradients
        # after each evaluation, as it gets them after the first.
        def averaged_closure():
            loss = closure()
            self.synchronize()
            return loss
        return super().step(averaged_closure)


class _WindowOptimizer(_Distributed):
    """Shared by the win_put, pull-get and push-sum wrappers: a window per parameter."""

    _bf_zero_init = False

    def __init__(self, params, model, num_steps_per_communication, window_prefix, default_prefix):
        super().__init__(params)
        self._bf_setup(model, num_steps_per_communication, window_prefix or default_prefix)
        # Window names as in BlueFog 0.3: "<window_prefix>.<parameter>", or the bare
        # parameter name without a prefix. Bare names would be shared by every
        # window wrapper built without a prefix, so only the first one built in
        # the process gets them; a later one gets its op-name prefix ("win_put",
        # "push_sum#1", ...: one counter hands these out, so no two are equal).
        # (A bare name can still equal a prefixed one, e.g. for a submodule named
        # "push_sum": win_create then refuses the duplicate name.)
        bare = not window_prefix and _next_prefix(_BARE_WINDOWS) == _BARE_WINDOWS  # (the first one only)
        self._bf_window_prefix = "" if bare else self._bf_prefix + "."
        self.force_barrier = False
        self._bf_windows: Dict[torch.nn.Parameter, str] = {}
        self._bf_buffers: Dict[torch.nn.Parameter, torch.Tensor] = {}
        if self._bf_active:
            for p in sorted(self._bf_names, key=lambda q: self._bf_names[q]):
                if p.requires_grad:
                    name = self._bf_name(p)
                    buf = self._bf_window_tensor(p)
                    win_ops.win_create(buf, name, zero_init=self._bf_zero_init)
                    self._bf_windows[p] = name
                    self._bf_buffers[p] = buf
            self._bf_register_forward_hooks()

    def _bf_name(self, p) -> str:
        return self._bf_window_prefix + self._bf_names[p]

    def _bf_window_tensor(self, p):
        return p.data  # the parameter itself is the window

    def _bf_forward(self, params):
        for p in params:
            if p in self._bf_windows and self._bf_due(p):
                self._bf_handles[p] = self._bf_start(p)

    def synchronize(self):
        """Waits for this step's window ops, then mixes what arrived into the
        parameters that communicated (only those: on a step without
        communication a parameter keeps its local value)."""
        done = self._bf_take_handles()
        for _, handle in done:
            win_ops.win_wait(handle)
        if self.force_barrier:
            mpi_ops.barrier()
        for p, _ in done:
            self._bf_combine(p, self._bf_windows[p])

    def step(self, closure=None):
        if self._bf_active and self._bf_should_sync:
            self.synchronize()
        return super().step(closure)

    def unregister_window(self):
        """Frees the windows (collective)."""
        if self._bf_windows and _basics.is_initialized():
            for name in self._bf_windows.values():
                if name in win_ops.get_current_created_window_names():
                    win_ops.win_free(name)
        self._bf_windows = {}

    def __del__(self):
        try:
            self.unregister_window()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass


class _WinPut(_WindowOptimizer):
    def __init__(self, params, model, num_steps_per_communication, window_prefix):
        self.dst_weights = None
        super().__init__(params, model, num_steps_per_communication, window_prefix, "win_put")

    def _bf_start(self, p):
        return win_ops.win_put_nonblocking(p.data, self._bf_windows[p], dst_weights=self.dst_weights)

    def _bf_combine(self, p, name):
        win_ops.win_update(name, require_mutex=True)  # in place on p.data


class _PullGet(_WindowOptimizer):
    def __init__(self, params, model, num_steps_per_communication, window_prefix):
        self.src_weights = None
        super().__init__(params, model, num_steps_per_communication, window_prefix, "pull_get")

    def _bf_start(self, p):
        # (Under the sources' mutexes, as in 0.3: a source's win_update rewrites
        # the tensor read here in place, under its own mutex.)
        return win_ops.win_get_nonblocking(self._bf_windows[p], src_weights=self.src_weights, require_mutex=True)

    def _bf_combine(self, p, name):
        win_ops.win_update(name, require_mutex=True)


class _PushSum(_WindowOptimizer):
    _bf_zero_init = True

    def __init__(self, params, model, num_steps_per_communication, window_prefix):
        super().__init__(params, model, num_steps_per_communication, window_prefix, "push_sum")
        outs = _basics.out_neighbor_ranks() if self._bf_active else []
        share = 1.0 / (len(outs) + 1)
        self.self_weight = share
        self.dst_weights = {d: share for d in outs}
        self.force_barrier = True

    def _bf_window_tensor(self, p):
        # [z, w]: the push-sum numerator (x * w) and the weight w.
        return torch.cat([p.data.detach().flatten(), torch.ones(1, dtype=p.dtype, device=p.device)])

    def _bf_start(self, p):
        buf = self._bf_buffers[p]
        buf[:-1].copy_(p.data.flatten() * buf[-1])
        return win_ops.win_accumulate_nonblocking(buf, self._bf_windows[p], self_weight=self.self_weight,
                                                  dst_weights=self.dst_weights, require_mutex=True)

    def _bf_combine(self, p, name):
        buf = win_ops.win_update_then_collect(name)
        p.data.copy_((buf[:-1] / buf[-1]).view_as(p))


class _Probe(torch.optim.Optimizer):
    pass


_BOOKKEEPING = []


def _optimizer_bookkeeping():
    """The instance attributes torch.optim.Optimizer.__init__ itself sets."""
    if not _BOOKKEEPING:
        _BOOKKEEPING.append(frozenset(vars(_Probe([torch.zeros(1, requires_grad=True)], {}))))
    return _BOOKKEEPING[0]


# The public name of each wrapper, for errors raised while wrapping.
_PUBLIC_NAMES = {}


def _wrap(impl, optimizer, *args):
    _basics.require_initialized(_PUBLIC_NAMES.get(impl, "a BlueFog distributed optimizer"))
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, _Distributed):
        # Its hooks already communicate; a second wrapper would add another
        # round (and Python refuses the class layout anyway).
        raise ValueError("the optimizer is already a BlueFog distributed optimizer (around "
                         f"{optimizer._bluefog_base_class.__name__}); wrap the plain torch.optim optimizer once")
    base = optimizer.__class__
    cls = type(base.__name__, (impl, base), {"_bluefog_base_class": base, "__module__": impl.__module__})
    wrapped = cls.__new__(cls)
    # Adopt the user's options exactly (defaults included), then the param groups.
    wrapped.defaults = optimizer.defaults
    # What the user's class keeps in attributes of its own (a custom optimizer's
    # options, LBFGS's parameter list, ...), as its __init__ left them: the
    # wrapper never runs that __init__. torch.optim.Optimizer's own
    # bookkeeping is set up afresh by the wrapper's __init__ below.
    own = _optimizer_bookkeeping()
    for key, value in list(vars(optimizer).items()):
        # (An lr scheduler made before wrapping replaced the user's `step` with
        # a tracking wrapper of the user's own step: the wrapper's step must
        # run, and the scheduler, which changes the shared param groups, need
        # not warn that the user's optimizer never stepped.)
        if key == "step":
            optimizer._opt_called = True
            continue
        if key not in own:
            setattr(wrapped, key, value)
    impl.__init__(wrapped, optimizer.param_groups, *args)
    # State the optimizer already has (e.g. loaded from a checkpoint) carries over.
    wrapped.state.update(optimizer.state)
    return wrapped


def _init_from_groups(self, params):
    torch.optim.Optimizer.__init__(self, params, self.defaults)


# The wrappers' first base __init__ call goes through the user's class, which
# may require arguments (e.g. lr); initialize through torch.optim.Optimizer with
# the user's defaults instead.
_Distributed.__init__ = _init_from_groups


def DistributedAdaptWithCombineOptimizer(optimizer, model, communication_type=CommunicationType.neighbor_allreduce,
                                         num_steps_per_communication=1):
    """Adapt-with-combine: each forward pass starts the communication of the
    parameters (neighbor_allreduce, hierarchical, allreduce or none); step()
    adopts the combined parameters, then applies the local update. The weight
    knobs self_weight, src_weights, dst_weights, src_machine_weights,
    dst_machine_weights and enable_topo_check may be changed every step."""
    return _wrap(_AdaptWithCombine, optimizer, model, communication_type, num_steps_per_communication)


def DistributedAdaptThenCombineOptimizer(optimizer, model, communication_type=CommunicationType.neighbor_allreduce,
                                         num_steps_per_communication=1):
    """Adapt-then-combine: as each gradient is ready the parameter takes its local
    optimizer step, then its communication starts; step() adopts the combined
    parameters. Works for any torch optimizer (each parameter is stepped alone);
    register_step_function() overrides the local step."""
    return _wrap(_AdaptThenCombine, optimizer, model, communication_type, num_steps_per_communication)


def DistributedGradientAllreduceOptimizer(optimizer, model, num_steps_per_communication=1):
    """Horovod-style: gradients are averaged over all ranks before each step."""
    return _wrap(_GradientAllreduce, optimizer, model, num_steps_per_communication)


def DistributedWinPutOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Asynchronous gossip with one window per parameter: forward passes put the
    parameters into the out-neighbors' windows; step() mixes what arrived.

    The windows are named after the parameters (``model.named_parameters()``),
    as in BlueFog 0.3: ``"<window_prefix>.<name>"``, or the bare name without a
    window_prefix. Only the first window wrapper built without a window_prefix
    in the process gets the bare names (even after it is released: when that
    happens may differ between ranks); a later one gets ``"<kind>.<name>"`` or
    ``"<kind>#n.<name>"`` (kind: win_put, pull_get, push_sum), so pass a
    window_prefix to a wrapper built again whose windows you address by name.
    The same holds for the pull-get and push-sum wrappers."""
    return _wrap(_WinPut, optimizer, model, num_steps_per_communication, window_prefix)


def DistributedPullGetOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Like the win_put optimizer, but each rank pulls its in-neighbors' parameters."""
    return _wrap(_PullGet, optimizer, model, num_steps_per_communication, window_prefix)


def DistributedPushSumOptimizer(optimizer, model, num_steps_per_communication=1, window_prefix=None):
    """Push-sum over windows (works on directed graphs): each rank accumulates
    shares of (x * w, w) into its out-neighbors and uses x = z / w."""
    return _wrap(_PushSum, optimizer, model, num_steps_per_communication, window_prefix)


_PUBLIC_NAMES.update({
    _AdaptWithCombine: "DistributedAdaptWithCombineOptimizer", _AdaptThenCombine: "DistributedAdaptThenCombineOptimizer",
    _GradientAllreduce: "DistributedGradientAllreduceOptimizer", _WinPut: "DistributedWinPutOptimizer",
    _PullGet: "DistributedPullGetOptimizer", _PushSum: "DistributedPushSumOptimizer"})


def _deprecated(old, communication_type):
    def factory(optimizer, model, num_steps_per_communication=1):
        warnings.warn(f"{old} is deprecated; use DistributedAdaptWithCombineOptimizer(communication_type="
                      f"CommunicationType.{communication_type.name})", PendingDeprecationWarning, stacklevel=2)
        return DistributedAdaptWithCombineOptimizer(optimizer, model, communication_type, num_steps_per_communication)
    factory.__name__ = old
    factory.__doc__ = f"Deprecated alias of DistributedAdaptWithCombineOptimizer with {communication_type.name}."
    return factory


DistributedAllreduceOptimizer = _deprecated("DistributedAllreduceOptimizer", CommunicationType.allreduce)
DistributedNeighborAllreduceOptimizer = _deprecated("DistributedNeighborAllreduceOptimizer",
                                                    CommunicationType.neighbor_allreduce)
DistributedHierarchicalNeighborAllreduceOptimizer = _deprecated(
    "DistributedHierarchicalNeighborAllreduceOptimizer", CommunicationType.hierarchical_neighbor_allreduce)

"""bf.broadcast_parameters, bf.allreduce_parameters and bf.broadcast_optimizer_state
on every rank.

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py. Every rank starts from
values that depend on its rank (so "equal after" means something), and checks
the result against what it computed for the root rank (or for every rank) itself.
"""
import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bluefog.torch as bf

bf.init()
SIZE = bf.size()
RANK = bf.rank()
ROOTS = sorted({0, SIZE - 1})


@pytest.fixture(autouse=True)
def _fresh():
    bf.init()
    yield


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))


def all_equal(t: torch.Tensor) -> bool:
    """True if t is the same on every rank."""
    g = bf.allgather(t.detach().reshape(1, -1).double())
    return bool((g == g[0]).all())


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)


def local_steps(model, opt, n, seed):
    """n plain local steps on rank-dependent data (bluefog wrappers: their base step)."""
    x, y = batch(seed)
    base_step = getattr(opt, "_bluefog_base_class", type(opt)).step
    for _ in range(n):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        base_step(opt)


# ---- broadcast_parameters -------------------------------------------------------------------------
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("form", ["state_dict", "named_parameters", "list", "dict_of_tensors"])
def test_broadcast_parameters(form, root):
    model = make_model(seed=RANK)
    want = make_model(seed=root)
    if form == "state_dict":
        bf.broadcast_parameters(model.state_dict(), root_rank=root)
    elif form == "named_parameters":  # a generator of (name, Parameter) pairs
        bf.broadcast_parameters(model.named_parameters(), root_rank=root)
    elif form == "list":
        bf.broadcast_parameters(list(model.parameters()), root_rank=root)
    else:
        bf.broadcast_parameters({f"t{i}": p.data for i, p in enumerate(model.parameters())}, root_rank=root)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), want.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_broadcast_parameters_plain_tensors_and_buffers():
    """Buffers (BatchNorm running stats, an int64 counter) travel with the state_dict."""
    torch.manual_seed(RANK)
    bn = nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(RANK))
    bn.num_batches_tracked.fill_(RANK + 10)
    tensors = [torch.full((2, 3), float(RANK)), torch.arange(4, dtype=torch.int32) + RANK]
    bf.broadcast_parameters(bn.state_dict(), root_rank=0)
    bf.broadcast_parameters(tensors, root_rank=0)
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert bn.num_batches_tracked.item() == 10 and bn.num_batches_tracked.dtype == torch.int64
    assert torch.equal(tensors[0], torch.zeros(2, 3))
    assert torch.equal(tensors[1], torch.arange(4, dtype=torch.int32))


@pytest.mark.parametrize("bad", [torch.zeros(3), "weights", 3, [1, 2], [torch.zeros(1), "x"], None])
def test_broadcast_parameters_rejects_other_types(bad):
    with pytest.raises(ValueError):
        bf.broadcast_parameters(bad, root_rank=0)
    with pytest.raises(ValueError):
        bf.allreduce_parameters(bad)


# ---- allreduce_parameters ----------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["state_dict", "named_parameters", "list"])
def test_allreduce_parameters_averages(form):
    model = make_model(seed=RANK)
    models = [make_model(seed=r) for r in range(SIZE)]
    if form == "state_dict":
        bf.allreduce_parameters(model.state_dict())
    elif form == "named_parameters":
        bf.allreduce_parameters(model.named_parameters())
    else:
        bf.allreduce_parameters(list(model.parameters()))
    for i, p in enumerate(model.parameters()):
        want = torch.stack([list(m.parameters())[i].detach() for m in models]).mean(0)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=1e-7)
        assert all_equal(p)


# ---- broadcast_optimizer_state ---------------------------------------------------------------------
def state_tensors(opt):
    """(param index, key) -> tensor (or number) of the optimizer state, in a stable order."""
    out = collections.OrderedDict()
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        for key, value in sorted(opt.state.get(p, {}).items()):
            out[(i, key)] = value
    return out


def check_state_is_roots(opt, ref_opt):
    got, want = state_tensors(opt), state_tensors(ref_opt)
    assert list(got) == list(want)
    for k, v in got.items():
        if torch.is_tensor(v):
            assert torch.is_tensor(want[k]) and v.dtype == want[k].dtype, k
            assert torch.equal(v, want[k]), k
        else:
            assert type(v) is type(want[k]) and v == want[k], k
    for g, rg in zip(opt.param_groups, ref_opt.param_groups):
        assert {k: v for k, v in g.items() if k != "params"} == {k: v for k, v in rg.items() if k != "params"}


OPTIMIZERS = {
    "SGD-momentum": lambda ps, r: torch.optim.SGD(ps, lr=0.1 * (r + 1), momentum=0.5 + 0.1 * r, nesterov=True),
    "Adam": lambda ps, r: torch.optim.Adam(ps, lr=0.01 * (r + 1), betas=(0.9, 0.99 - 0.001 * r),
                                           amsgrad=True),
    "RMSprop": lambda ps, r: torch.optim.RMSprop(ps, lr=0.01 * (r + 1), momentum=0.1, centered=True),
    "Adagrad": lambda ps, r: torch.optim.Adagrad(ps, lr=0.1 * (r + 1)),
    "Adadelta": lambda ps, r: torch.optim.Adadelta(ps, rho=0.9 - 0.01 * r),
}


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_broadcast_optimizer_state(name, root):
    """Ranks take a different number of steps with different options (lr, betas,
    momentum, ...): afterwards every rank holds the root's state and options.
    The parameters are not touched."""
    model = make_model(seed=RANK)
    opt = OPTIMIZERS[name](model.parameters(), RANK)
    local_steps(model, opt, RANK + 1, seed=RANK)
    params_before = [p.detach().clone() for p in model.parameters()]

    ref_model = make_model(seed=root)
    ref = OPTIMIZERS[name](ref_model.parameters(), root)
    local_steps(ref_model, ref, root + 1, seed=root)

    bf.broadcast_optimizer_state(opt, root_rank=root)
    check_state_is_roots(opt, ref)
    for p, before in zip(model.parameters(), params_before):
        assert torch.equal(p, before)
    if name == "Adam":
        assert all(torch.is_tensor(s["step"]) for s in opt.state.values())
        assert all(s["step"].item() == root + 1 for s in opt.state.values())
    # the optimizer keeps working, from the same state on every rank
    bf.broadcast_parameters(model.state_dict(), root_rank=root)
    local_steps(model, opt, 2, seed=123)
    for p in model.parameters():
        assert all_equal(p)


class ScalarStateSGD(torch.optim.SGD):
    """Keeps Python scalars in its state (an int counter, a float, a bool, a tuple)."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state[p]
                s["count"] = s.get("count", 0) + 1
                s["scale"] = s.get("scale", 1.0) * 0.5
                s["flag"] = not s.get("flag", False)
                s["pair"] = (s["count"], s["scale"])
        return loss


def test_broadcast_optimizer_state_python_scalars():
    model = make_model(seed=RANK)
    opt = ScalarStateSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01 * RANK)
    local_steps(model, opt, RANK + 1, seed=RANK)
    bf.broadcast_optimizer_state(opt, root_rank=0)
    for s in opt.state.values():
        assert type(s["count"]) is int and s["count"] == 1
        assert type(s["scale"]) is float and s["scale"] == 0.5
        assert type(s["flag"]) is bool and s["flag"] is True
        assert s["pair"] == (1, 0.5) and type(s["pair"][0]) is int
    assert opt.param_groups[0]["weight_decay"] == 0.0
    assert type(opt.param_groups[0]["nesterov"]) is bool


@pytest.mark.parametrize("name", ["SGD-momentum", "Adam"])
def test_broadcast_optimizer_state_before_any_step(name):
    """A fresh optimizer has no state: it is created (a zero-gradient step that
    must not move the parameters nor change lr or the gradients) and broadcast."""
    model = make_model(seed=RANK)
    opt = OPTIMIZERS[name](model.parameters(), RANK)
    assert not opt.state
    params_before = [p.detach().clone() for p in model.parameters()]
    grads_before = [p.grad for p in model.parameters()]
    bf.broadcast_optimizer_state(opt, root_rank=0)
    assert len(opt.state) == len(params_before)
    for p, before, g in zip(model.parameters(), params_before, grads_before):
        assert torch.equal(p, before)
        assert p.grad is g
    assert opt.param_groups[0]["lr"] == OPTIMIZERS[name]([torch.zeros(1, requires_grad=True)], 0).defaults["lr"]
    for s in opt.state.values():
        for key, value in s.items():
            if torch.is_tensor(value):
                assert all_equal(value.float()), key


def test_broadcast_optimizer_state_before_any_step_starts_state_from_the_real_lr():
    """Rprop's step sizes start at lr: the state-creating step runs with the
    real lr (with lr 0 every step size started at the minimum, 1e-6, and took
    about 50 steps to recover), and the parameters are put back (AdamW's
    weight decay moves them even with zero gradients)."""
    makers = {"Rprop": lambda ps: torch.optim.Rprop(ps, lr=0.01),
              "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.5)}
    for name, make in makers.items():
        model = make_model(seed=RANK)
        opt = make(model.parameters())
        before = [p.detach().clone() for p in model.parameters()]
        bf.broadcast_optimizer_state(opt, root_rank=0)
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p, b), name
        assert opt.param_groups[0]["lr"] == make([torch.zeros(1, requires_grad=True)]).defaults["lr"], name
        if name == "Rprop":
            for st in opt.state.values():
                torch.testing.assert_close(st["step_size"], torch.full_like(st["step_size"], 0.01))


def test_broadcast_optimizer_state_keeps_existing_grads():
    model = make_model(seed=RANK)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = batch(RANK)
    F.mse_loss(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    bf.broadcast_optimizer_state(opt, root_rank=0)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_broadcast_optimizer_state_param_group_options():
    """Several param groups whose options differ per rank before: equal to the
    root's after, with their Python types (float, tuple, bool) kept."""
    model = make_model(seed=RANK)
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.1 + RANK},
                            {"params": model[2].parameters(), "betas": (0.5, 0.6 + 0.01 * RANK)}],
                           lr=0.001 * (RANK + 1), weight_decay=0.1 * RANK)
    bf.broadcast_optimizer_state(opt, root_rank=0)
    g0, g1 = opt.param_groups
    assert g0["lr"] == 0.1 and type(g0["lr"]) is float
    assert g1["lr"] == 0.001
    assert g1["betas"] == (0.5, 0.6) and type(g1["betas"]) is tuple
    assert g0["weight_decay"] == 0.0 and g1["weight_decay"] == 0.0
    assert type(g0["amsgrad"]) is bool


def test_broadcast_optimizer_state_lbfgs_is_rejected():
    model = make_model(seed=RANK)
    with pytest.raises(ValueError):
        bf.broadcast_optimizer_state(torch.optim.LBFGS(model.parameters()), root_rank=0)


WRAPPERS = {
    "awc": lambda o, m: bf.DistributedAdaptWithCombineOptimizer(o, m),
    "atc": lambda o, m: bf.DistributedAdaptThenCombineOptimizer(o, m),
    "grad": lambda o, m: bf.DistributedGradientAllreduceOptimizer(o, m),
    "win_put": lambda o, m: bf.DistributedWinPutOptimizer(o, m),
}


@pytest.mark.parametrize("kind", list(WRAPPERS))
def test_broadcast_optimizer_state_of_a_bluefog_optimizer(kind):
    """The usual start of a training script: broadcast_parameters, then
    broadcast_optimizer_state on the distributed optimizer (fresh state: the
    user's own step creates it, without communicating)."""
    model = make_model(seed=RANK)
    opt = WRAPPERS[kind](torch.optim.SGD(model.parameters(), lr=0.1 * (RANK + 1), momentum=0.9), model)
    try:
        bf.broadcast_parameters(model.state_dict(), root_rank=0)
        before = [p.detach().clone() for p in model.parameters()]
        bf.broadcast_optimizer_state(opt, root_rank=0)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
        for p, b in zip(model.parameters(), before):
            assert torch.equal(p, b)
        assert len(opt.state) == len(before)
        for s in opt.state.values():
            assert all_equal(s["momentum_buffer"])
        # then training proceeds normally
        x, y = batch(RANK)
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    finally:
        if hasattr(opt, "unregister_window"):
            opt.unregister_window()


def test_broadcast_optimizer_state_takes_a_tensor_lr():
    """A param-group option that is a tensor (torch accepts a tensor lr) was
    silently left different on every rank."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01 * (bf.rank() + 1)))
    bf.broadcast_optimizer_state(opt, 0)
    lr = opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and abs(float(lr) - 0.01) < 1e-9


def test_allreduce_parameters_refuses_integer_entries_before_changing_any():
    """A BatchNorm state_dict's num_batches_tracked (int64) cannot be averaged:
    refused before any entry is averaged (the float entries were averaged in
    place, then the int one failed)."""
    bn = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        bn.running_mean.fill_(float(bf.rank()))
    with pytest.raises(ValueError, match="num_batches_tracked' is torch.int64"):
        bf.allreduce_parameters(bn.state_dict())
    assert torch.equal(bn.running_mean, torch.full((2,), float(bf.rank())))

"""The distributed optimizers on every rank: AWC and ATC (neighbor_allreduce,
allreduce, hierarchical, empty), gradient allreduce, win_put, pull_get,
push_sum and the deprecated aliases.

Run on 1, 2 and 4 ranks by tests/test_parallel_suites.py.

The problem is a 16 -> 3 linear regression without noise: X (400 x 16) and A
(16 x 3) are drawn with a fixed seed, Y = X A, and rank r trains on the rows
X[r::size]. Every shard has far more rows than unknowns, so every rank's local
loss has the same unique minimizer (A, bias 0): a correct optimizer drives the
MSE on the full data set to ~0 on every rank. Unless a test says otherwise,
ranks START FROM DIFFERENT parameters (seeded by rank), so agreement at the end
comes from the communication (checked separately, with lr=0, where only the
communication can move the parameters).

Results that decide an assertion are allgathered, so every rank takes the same
branch (a rank failing alone would leave its peers waiting in a collective).

On 4 ranks this file sets BLUEFOG_NODES_PER_MACHINE=2 before bluefog starts
(2 "machines" of 2 ranks), so hierarchical_neighbor_allreduce really talks
between machines; on 2 ranks that gives one machine of 2 ranks (the single
machine case, where hierarchical is a local average), as on any single host.
"""
import os


def _launcher_world_size() -> int:
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


if "BLUEFOG_NODES_PER_MACHINE" not in os.environ and _launcher_world_size() > 1 \
        and _launcher_world_size() % 2 == 0:
    os.environ["BLUEFOG_NODES_PER_MACHINE"] = "2"

import copy  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bluefog.torch as bf  # noqa: E402
from bluefog.torch.optimizers import DistributedPullGetOptimizer, DistributedPushSumOptimizer  # noqa: E402

bf.init()
SIZE = bf.size()
RANK = bf.rank()
CT = bf.CommunicationType


def machines() -> int:
    return bf.machine_size() if bf.is_homogeneous() else 1


@pytest.fixture(autouse=True)
def _fresh(request):
    bf.init()  # resets the topology to ExponentialGraph(size)
    if bf.is_homogeneous():
        bf.set_machine_topology(bf.ExponentialGraph(machines()))
    yield
    # A failed rank leaves at once (parallel conftest): no collective cleanup then.
    if request.session.testsfailed == 0:
        bf.win_free()
        bf.barrier()


# ---- the problem -------------------------------------------------------------------------
D_IN, D_OUT, ROWS = 16, 3, 400
MSE_TOL = 1e-8       # full-data MSE every rank must reach
SPREAD_TOL = 1e-4    # max |param_r - mean over ranks| at the end (MSE 1e-8 allows ~1e-4)
_gen = torch.Generator().manual_seed(2024)
X = torch.randn(ROWS, D_IN, generator=_gen)
A = torch.randn(D_IN, D_OUT, generator=_gen)
Y = X @ A
XR, YR = X[RANK::SIZE], Y[RANK::SIZE]


def make_model(seed=None):
    """nn.Sequential(Linear(16, 3)); different on every rank unless a seed is given."""
    torch.manual_seed(1000 + RANK if seed is None else seed)
    return nn.Sequential(nn.Linear(D_IN, D_OUT))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double()


def gathered(model) -> torch.Tensor:
    """Every rank's flattened parameters, one row per rank."""
    return bf.allgather(flat(model)[None])


def spread(model) -> float:
    allp = gathered(model)
    return (allp - allp.mean(0)).abs().max().item()


def worst(value: float) -> float:
    return bf.allgather(torch.tensor([float(value)], dtype=torch.float64)).max().item()


def full_mse(model) -> float:
    with torch.no_grad():
        return F.mse_loss(model(X), Y).item()


def all_true(flag: bool) -> bool:
    return worst(0.0 if flag else 1.0) == 0.0


def train(opt, model, steps, before_step=None, x=None, y=None, record=False, scheduler=None):
    """The usual loop (a learning-rate scheduler steps after each optimizer step);
    returns the flattened parameters after each step if record."""
    x = XR if x is None else x
    y = YR if y is None else y
    history = []
    for t in range(steps):
        if before_step is not None:
            before_step(opt, t)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if record:
            history.append(flat(model).clone())
    return history


def assert_converged(model, what):
    mse, sp = worst(full_mse(model)), spread(model)
    assert mse < MSE_TOL, f"{what}: worst full-data MSE {mse:.3e} (>= {MSE_TOL}); spread {sp:.3e}"
    assert sp < SPREAD_TOL, f"{what}: parameter spread over ranks {sp:.3e} (>= {SPREAD_TOL}); MSE {mse:.3e}"


# ---- building the optimizers ---------------------------------------------------------------
def build(kind, model, base=None, comm=None, n=1):
    """kind: awc / atc (with comm) / grad / win_put / pull_get / push_sum. Window
    optimizers get force_barrier=True (every step mixes this step's values)."""
    base = base or torch.optim.SGD(model.parameters(), lr=0.5)
    if kind == "awc":
        return bf.DistributedAdaptWithCombineOptimizer(base, model, communication_type=comm,
                                                       num_steps_per_communication=n)
    if kind == "atc":
        return bf.DistributedAdaptThenCombineOptimizer(base, model, communication_type=comm,
                                                       num_steps_per_communication=n)
    if kind == "grad":
        return bf.DistributedGradientAllreduceOptimizer(base, model, num_steps_per_communication=n)
    if kind == "win_put":
        opt = bf.DistributedWinPutOptimizer(base, model, num_steps_per_communication=n)
    elif kind == "pull_get":
        opt = DistributedPullGetOptimizer(base, model, num_steps_per_communication=n)
    elif kind == "push_sum":
        opt = DistributedPushSumOptimizer(base, model, num_steps_per_communication=n)
    else:
        raise AssertionError(kind)
    opt.force_barrier = True
    return opt


def release(opt):
    """Frees a window optimizer's windows now (collective), not at garbage collection."""
    if hasattr(opt, "unregister_window"):
        opt.unregister_window()


def dynamic_updater(kind, comm):
    """The per-step weight changes of a dynamic topology (None: static, or size 1).

    neighbor_allreduce: one peer per step from GetDynamicOnePeerSendRecvRanks on the
    exponential-2 graph; hierarchical: one machine per step; win_put / pull_get / push_sum:
    one out- (or in-) neighbor per step."""
    if SIZE == 1:
        return None
    if kind in ("awc", "atc") and comm == CT.neighbor_allreduce:
        gen = bf.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), RANK)

        def update(opt, t):
            send, recv = next(gen)
            w = 1.0 / (len(recv) + 1)
            opt.self_weight = w
            opt.src_weights = {r: w for r in recv}
            opt.dst_weights = {r: 1.0 for r in send}
        return update
    if kind in ("awc", "atc") and comm == CT.hierarchical_neighbor_allreduce:
        gen = bf.GetExp2DynamicSendRecvMachineRanks(SIZE, bf.local_size(), RANK, bf.local_rank())

        def update(opt, t):
            send, recv = next(gen)
            w = 1.0 / (len(recv) + 1)
            opt.self_weight = w
            opt.src_machine_weights = {m: w for m in recv}
            opt.dst_machine_weights = send
        return update
    if kind == "win_put":
        outs = bf.out_neighbor_ranks()

        def update(opt, t):
            opt.dst_weights = {outs[t % len(outs)]: 1.0}
        return update
    if kind == "pull_get":
        ins = bf.in_neighbor_ranks()

        def update(opt, t):
            opt.src_weights = {ins[t % len(ins)]: 1.0}
        return update
    if kind == "push_sum":
        gen = bf.GetDynamicOnePeerSendRecvRanks(bf.load_topology(), RANK)

        def update(opt, t):
            send, _ = next(gen)
            opt.self_weight = 0.5
            opt.dst_weights = {send[0]: 0.5}
        return update
    raise AssertionError((kind, comm))


NA, AR, HI, EM = (CT.neighbor_allreduce, CT.allreduce, CT.hierarchical_neighbor_allreduce, CT.empty)
CONVERGENCE = [
    ("awc", NA, False), ("awc", NA, True), ("awc", AR, False), ("awc", HI, False), ("awc", HI, True),
    ("awc", EM, False),
    ("atc", NA, False), ("atc", NA, True), ("atc", AR, False), ("atc", HI, False), ("atc", HI, True),
    ("atc", EM, False),
    ("grad", None, False),
    ("win_put", None, False), ("win_put", None, True),
    ("pull_get", None, False), ("pull_get", None, True),
    ("push_sum", None, False), ("push_sum", None, True),
]


def case_id(case):
    kind, comm, dynamic = case
    return "-".join([kind] + ([comm.name] if comm else []) + (["dynamic"] if dynamic else ["static"]))


def skip_unavailable(kind, comm, dynamic):
    if dynamic and SIZE == 1:
        pytest.skip("a dynamic topology needs more than one rank")
    if comm == HI and not bf.is_homogeneous():
        pytest.skip("hierarchical ops need a homogeneous cluster")
    if comm == HI and dynamic and machines() < 2:
        pytest.skip("a dynamic machine topology needs more than one machine")


# ---- convergence and consensus ---------------------------------------------------------------
@pytest.mark.parametrize("case", CONVERGENCE, ids=case_id)
def test_converges_and_reaches_consensus(case):
    kind, comm, dynamic = case
    skip_unavailable(kind, comm, dynamic)
    model = make_model()
    if kind == "grad":  # gradient averaging keeps the ranks' offsets: start them equal
        bf.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = build(kind, model, comm=comm)
    try:
        train(opt, model, 120, dynamic_updater(kind, comm) if dynamic else None)
        assert_converged(model, case_id(case))
    finally:
        release(opt)


@pytest.mark.parametrize("kind,topology", [("awc", "RingGraph"), ("awc", "StarGraph"), ("atc", "DirectedRing"),
                                           ("push_sum", "DirectedRing")])
def test_converges_on_other_static_topologies(kind, topology):
    graphs = {"RingGraph": bf.RingGraph, "DirectedRing": lambda n: bf.RingGraph(n, connect_style=1),
              "StarGraph": bf.StarGraph}
    assert bf.set_topology(graphs[topology](SIZE))
    model = make_model()
    opt = build(kind, model, comm=NA)
    try:
        train(opt, model, 150)
        assert_converged(model, f"{kind} on {topology}")
    finally:
        release(opt)


CONSENSUS = [
    ("awc", NA, False, True), ("awc", NA, True, True), ("awc", AR, False, True), ("awc", HI, False, True),
    ("awc", HI, True, True), ("atc", NA, False, True), ("atc", NA, True, True), ("atc", AR, False, True),
    ("atc", HI, False, True), ("push_sum", None, False, True), ("push_sum", None, True, True),
    ("win_put", None, False, False), ("pull_get", None, False, False),
]


@pytest.mark.parametrize("case", CONSENSUS, ids=lambda c: case_id(c[:3]))
def test_communication_alone_reaches_consensus(case):
    """lr=0: only the communication moves the parameters. They must agree at the end,
    on the initial average where the mixing preserves it (doubly stochastic weights,
    allreduce, push-sum), and nowhere else than in the initial values' range."""
    kind, comm, dynamic, keeps_mean = case
    skip_unavailable(kind, comm, dynamic)
    model = make_model()
    before = gathered(model)
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.0), comm=comm)
    try:
        train(opt, model, 40, dynamic_updater(kind, comm) if dynamic else None)
        after = gathered(model)
        sp = (after - after.mean(0)).abs().max().item()
        assert sp < 1e-6, f"{case_id(case[:3])}: spread {sp:.3e} after 40 rounds of pure communication"
        if keeps_mean:
            torch.testing.assert_close(after.mean(0), before.mean(0), atol=1e-6, rtol=0)
        assert bool((after.min(0).values >= before.min(0).values - 1e-6).all())
        assert bool((after.max(0).values <= before.max(0).values + 1e-6).all())
        if SIZE > 1:  # the ranks started apart
            assert (before - before.mean(0)).abs().max().item() > 0.01
    finally:
        release(opt)


@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_empty_communication_leaves_parameters_alone(kind):
    model = make_model()
    before = flat(model)
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.0), comm=EM)
    train(opt, model, 3)
    assert torch.equal(flat(model), before)


# ---- exact trajectories ------------------------------------------------------------------------
BASES = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "SGD-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=0.05, weight_decay=1e-3),
    "AdamW-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.05, amsgrad=True),
    "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=0.03, alpha=0.999, momentum=0.1),
    "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.5),
    "Adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.5, eps=1e-3),
}


def reference_history(base_name, steps, x=None, y=None, seed=None, scheduler=None):
    model = make_model(seed)
    opt = BASES[base_name](model.parameters())
    return train(opt, model, steps, x=x, y=y, record=True, scheduler=scheduler(opt) if scheduler else None)


@pytest.mark.parametrize("base_name", list(BASES))
@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_empty_communication_matches_plain_optimizer(kind, base_name):
    """With CommunicationType.empty each rank runs the plain optimizer on its shard
    (ATC steps each parameter alone; the result must be the same)."""
    model = make_model()
    opt = build(kind, model, base=BASES[base_name](model.parameters()), comm=EM)
    got = train(opt, model, 8, record=True)
    want = reference_history(base_name, 8)
    for t, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7, msg=lambda m: f"step {t}: {m}")


SIZE_ONE_KINDS = [("awc", NA), ("awc", AR), ("awc", HI), ("awc", EM), ("atc", NA), ("atc", AR), ("atc", EM),
                  ("grad", None), ("win_put", None), ("pull_get", None), ("push_sum", None)]


@pytest.mark.skipif(SIZE != 1, reason="the size-1 shortcut")
@pytest.mark.parametrize("base_name", ["SGD-momentum", "Adam"])
@pytest.mark.parametrize("kind_comm", SIZE_ONE_KINDS,
                         ids=lambda kc: "-".join([kc[0]] + ([kc[1].name] if kc[1] else [])))
def test_size_one_is_exactly_the_plain_optimizer(kind_comm, base_name):
    kind, comm = kind_comm
    model = make_model()
    opt = build(kind, model, base=BASES[base_name](model.parameters()), comm=comm)
    assert not getattr(opt, "_bf_hooks", [])  # nothing registered
    got = train(opt, model, 6, record=True)
    want = reference_history(base_name, 6)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_gradient_allreduce_is_centralized_gradient_descent():
    """Equal shards: the average of the shards' gradients is the full-data gradient,
    so every rank follows full-batch SGD on all 400 rows, and the ranks stay equal."""
    model = make_model()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = build("grad", model, base=BASES["SGD-momentum"](model.parameters()))
    got = train(opt, model, 10, record=True)
    want = reference_history("SGD-momentum", 10, x=X, y=Y, seed=1000)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert spread(model) == 0.0


def test_gradient_allreduce_two_backward_passes_per_step():
    """num_steps_per_communication=2: the gradients of two backward passes are
    accumulated, then averaged: the full-data step with twice the gradient."""
    model = make_model()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = build("grad", model, base=torch.optim.SGD(model.parameters(), lr=0.1), n=2)
    ref = make_model(seed=1000)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    for _ in range(5):
        opt.zero_grad()
        for _ in range(2):
            F.mse_loss(model(XR), YR).backward()
        opt.step()
        ref_opt.zero_grad()
        F.mse_loss(ref(X), Y).backward()
        ref_opt.step()
        torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)
    assert spread(model) == 0.0


def test_two_wrappers_over_models_with_the_same_parameter_names():
    """A GAN-like pair: two models with the same parameter names, each with its own
    gradient-allreduce wrapper, one backward over both losses (both wrappers' ops in
    flight at once). Each must average its own gradients: full-data SGD on both."""
    ma, mb = make_model(), make_model(seed=77)
    bf.broadcast_parameters(ma.state_dict(), root_rank=0)
    bf.broadcast_parameters(mb.state_dict(), root_rank=0)
    oa = build("grad", ma, base=torch.optim.SGD(ma.parameters(), lr=0.1))
    ob = build("grad", mb, base=torch.optim.SGD(mb.parameters(), lr=0.05))
    ra, rb = make_model(seed=1000), make_model(seed=77)
    ra_opt, rb_opt = torch.optim.SGD(ra.parameters(), lr=0.1), torch.optim.SGD(rb.parameters(), lr=0.05)
    for _ in range(4):
        oa.zero_grad()
        ob.zero_grad()
        (F.mse_loss(ma(XR), YR) + 3 * F.mse_loss(mb(XR), YR)).backward()
        oa.step()
        ob.step()
        for ref, ref_opt, k in ((ra, ra_opt, 1), (rb, rb_opt, 3)):
            ref_opt.zero_grad()
            (k * F.mse_loss(ref(X), Y)).backward()
            ref_opt.step()
        torch.testing.assert_close(flat(ma), flat(ra), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat(mb), flat(rb), rtol=1e-5, atol=1e-6)
    # the ops are told apart by name, the same on every rank
    assert oa._bf_prefix != ob._bf_prefix
    code = torch.tensor([list((oa._bf_prefix + "|" + ob._bf_prefix).encode().ljust(32))])
    every = bf.allgather(code)
    assert (every == code).all(), every


# ---- ATC with other optimizers -------------------------------------------------------------------
ATC_BASES = {
    "Adam": (lambda ps: torch.optim.Adam(ps, lr=0.1), 250),
    "RMSprop": (lambda ps: torch.optim.RMSprop(ps, lr=0.03, alpha=0.999, eps=0.01), 100),
    "Adagrad": (lambda ps: torch.optim.Adagrad(ps, lr=0.5), 150),
    "Adadelta": (lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.5, eps=1e-3), 120),
    "SGD-momentum": (lambda ps: torch.optim.SGD(ps, lr=0.3, momentum=0.5), 120),
}


@pytest.mark.parametrize("base_name", list(ATC_BASES))
def test_atc_with_other_optimizers_converges(base_name):
    make, steps = ATC_BASES[base_name]
    model = make_model()
    opt = build("atc", model, base=make(model.parameters()), comm=NA)
    train(opt, model, steps)
    assert_converged(model, f"ATC {base_name}")
    assert opt.state, "the per-parameter steps keep the optimizer's state"


def test_atc_register_step_function():
    calls = []

    def plain_sgd(optimizer, p, grad, group):
        calls.append(p)
        p.data.add_(grad, alpha=-group["lr"])

    model = make_model()
    opt = build("atc", model, base=torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5), comm=NA)
    opt.register_step_function(plain_sgd)
    train(opt, model, 120)
    assert_converged(model, "ATC with a registered step function")
    if SIZE > 1:  # size 1: the plain optimizer runs
        assert len(calls) == 120 * 2  # every step, each of the two parameters
        assert not opt.state  # momentum never used


def test_atc_any_optimizer_without_step_function():
    """The per-parameter step works for optimizers outside the built-in list."""
    model = make_model()
    opt = build("atc", model, base=torch.optim.NAdam(model.parameters(), lr=0.1), comm=NA)
    train(opt, model, 10)
    assert worst(full_mse(model)) < F.mse_loss(make_model()(X), Y).item()


class _GroupCountingSGD(torch.optim.Optimizer):
    """SGD with lr / (the number of steps taken), counted in the param group
    (as e.g. some LAMB/LARS implementations keep their step)."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            for p in group["params"]:
                if p.grad is not None:
                    p.data.add_(p.grad, alpha=-group["lr"] / group["step"])


def test_atc_refuses_an_optimizer_that_changes_its_param_group():
    """Per-parameter steps would lose (or over-count) state kept in the param
    group: a ValueError that names the key and the remedy, instead of wrong
    numbers (it used to train with the count never kept). With a registered
    step function it trains."""
    model = make_model()
    opt = build("atc", model, base=_GroupCountingSGD(model.parameters(), lr=0.5), comm=NA)
    if SIZE > 1:  # (size 1: the plain optimizer runs)
        with pytest.raises(ValueError, match=r"changed its param group \('step'\).*register_step_function"):
            F.mse_loss(model(XR), YR).backward()
        opt.synchronize()
        opt.zero_grad()

    def step_function(optimizer, p, grad, group):
        p.data.add_(grad, alpha=-group["lr"])

    opt.register_step_function(step_function)
    train(opt, model, 120)
    if SIZE > 1:
        assert_converged(model, "ATC with a registered step function over a group-counting optimizer")
    else:  # the plain optimizer, its own count kept
        assert opt.param_groups[0]["step"] == 120


def test_atc_rejects_closure():
    model = make_model()
    opt = build("atc", model, comm=NA)
    if SIZE == 1:
        opt.step(lambda: F.mse_loss(model(XR), YR))  # plain optimizer
    else:
        with pytest.raises(ValueError):
            opt.step(lambda: F.mse_loss(model(XR), YR))


# ---- num_steps_per_communication ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_two_steps_per_communication(kind):
    """Local steps between communications: with lr=0 the parameters change only
    on every second step; with a real lr the training still converges."""
    model = make_model()
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.0), comm=NA, n=2)
    p0 = flat(model)
    train(opt, model, 1)
    assert torch.equal(flat(model), p0)
    train(opt, model, 1)
    moved = not torch.equal(flat(model), p0)
    assert all_true(moved == (SIZE > 1))
    p2 = flat(model)
    train(opt, model, 1)
    assert torch.equal(flat(model), p2)

    model = make_model()
    opt = build(kind, model, comm=NA, n=2)
    train(opt, model, 160)
    assert_converged(model, f"{kind} with num_steps_per_communication=2")


@pytest.mark.parametrize("kind", ["win_put"])
def test_window_optimizers_two_steps_per_communication(kind):
    model = make_model()
    opt = build(kind, model, n=2)
    try:
        train(opt, model, 160)
        assert_converged(model, f"{kind} with num_steps_per_communication=2")
    finally:
        release(opt)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", ["awc", "atc", "grad", "win_put", "pull_get", "push_sum"])
def test_steps_between_communications_are_plain_local_steps(kind, n):
    """Every rank starts from the same parameters and takes the same gradient,
    so any neighbor average of them is the identity (each wrapper's weights sum
    to 1): whatever the wrapper and
    whichever steps communicate, the trajectory must be plain SGD's. (The window
    optimizers used to mix stale window contents into the parameters on the
    steps without communication: push-sum undid those local steps.)"""
    x, y = X[:8], Y[:8]
    model, ref = make_model(seed=7), make_model(seed=7)
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.05),
                comm=NA if kind in ("awc", "atc") else None, n=n)
    plain = torch.optim.SGD(ref.parameters(), lr=0.05)
    # Window ops are one-sided: a barrier before each forward pass makes every
    # put / get see the neighbors' parameters of the same step.
    aligned = (lambda o, t: bf.barrier()) if kind in ("win_put", "pull_get", "push_sum") else None
    try:
        got = train(opt, model, 3 * n + 1, before_step=aligned, x=x, y=y, record=True)
        want = train(plain, ref, 3 * n + 1, x=x, y=y, record=True)
    finally:
        release(opt)
    for t, (g, w) in enumerate(zip(got, want)):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6), f"{kind}, n={n}: step {t + 1} differs by " \
                                                             f"{(g - w).abs().max().item():.3e}"


class ClippedSGD(torch.optim.Optimizer):
    """A user optimizer that keeps an option in an attribute of its own."""

    def __init__(self, params, lr=0.1, clip=0.05):
        super().__init__(params, dict(lr=lr))
        self.clip = clip

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad.clamp(-self.clip, self.clip), alpha=-g["lr"])


@pytest.mark.parametrize("kind", ["awc", "atc", "grad", "win_put"])
def test_user_optimizer_attributes_are_kept(kind):
    """The wrapper never runs the user class's __init__; what that __init__
    stored must still be there (it used to raise AttributeError in step())."""
    model, ref = make_model(seed=7), make_model(seed=7)
    opt = build(kind, model, base=ClippedSGD(model.parameters(), lr=0.1, clip=0.05),
                comm=NA if kind in ("awc", "atc") else None)
    try:
        assert opt.clip == 0.05
        got = train(opt, model, 3, x=X[:8], y=Y[:8], record=True)
    finally:
        release(opt)
    want = train(ClippedSGD(ref.parameters(), lr=0.1, clip=0.05), ref, 3, x=X[:8], y=Y[:8], record=True)
    assert torch.allclose(got[-1], want[-1], rtol=1e-5, atol=1e-6)


def test_gradient_allreduce_with_lbfgs():
    """LBFGS re-evaluates the loss inside step(closure): each evaluation's
    gradients are averaged over the ranks. With each rank on its own shard,
    the result is LBFGS on the mean of the shard losses (computed here on one
    process for comparison)."""
    model, ref = make_model(seed=7), make_model(seed=7)
    opt = bf.DistributedGradientAllreduceOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5),
                                                   model)
    plain = torch.optim.LBFGS(ref.parameters(), lr=0.5, max_iter=5)
    shards = [(X[r::SIZE], Y[r::SIZE]) for r in range(SIZE)]

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(XR), YR)
        loss.backward()
        return loss

    def mean_closure():
        plain.zero_grad()
        loss = sum(F.mse_loss(ref(xs), ys) for xs, ys in shards) / SIZE
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
        plain.step(mean_closure)
    assert torch.allclose(flat(model), flat(ref), rtol=1e-4, atol=1e-5), \
        (flat(model) - flat(ref)).abs().max().item()
    assert spread(model) == 0.0


def test_extra_forward_warns_once():
    """A second forward before step() would start a second communication of the
    same parameters: it is skipped with one warning."""
    model = make_model()
    opt = build("awc", model, comm=NA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.zero_grad()
            model(XR)
            F.mse_loss(model(XR), YR).backward()
            opt.step()
    unexpected = [w for w in caught if "Unexpected behavior" in str(w.message)]
    assert len(unexpected) == (1 if SIZE > 1 else 0)


# ---- the deprecated aliases ----------------------------------------------------------------------
@pytest.mark.parametrize("alias,comm", [("DistributedAllreduceOptimizer", AR),
                                        ("DistributedNeighborAllreduceOptimizer", NA),
                                        ("DistributedHierarchicalNeighborAllreduceOptimizer", HI)])
def test_deprecated_aliases(alias, comm):
    model = make_model()
    with pytest.warns(PendingDeprecationWarning):
        opt = getattr(bf, alias)(torch.optim.SGD(model.parameters(), lr=0.5), model)
    assert opt.communication_type == comm
    assert isinstance(opt, torch.optim.SGD)
    train(opt, model, 120)
    assert_converged(model, alias)


# ---- the wrapper is the user's optimizer ----------------------------------------------------------
class MySGD(torch.optim.SGD):
    """A user subclass with a required extra argument."""

    def __init__(self, params, lr, tag):
        super().__init__(params, lr=lr)
        self.tag = tag


ALL_KINDS = [("awc", NA), ("atc", NA), ("grad", None), ("win_put", None), ("pull_get", None), ("push_sum", None)]


@pytest.mark.parametrize("kind_comm", ALL_KINDS, ids=lambda kc: kc[0])
def test_isinstance_of_user_class(kind_comm):
    kind, comm = kind_comm
    model = make_model()
    if kind == "grad":
        bf.broadcast_parameters(model.state_dict(), root_rank=0)
    user = MySGD(model.parameters(), lr=0.5, tag="x")
    opt = build(kind, model, base=user, comm=comm)
    try:
        assert isinstance(opt, MySGD)
        assert isinstance(opt, torch.optim.SGD)
        assert isinstance(opt, torch.optim.Optimizer)
        assert type(opt).__name__ == "MySGD"
        assert opt.defaults == user.defaults
        assert [g["lr"] for g in opt.param_groups] == [0.5]
        assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in model.parameters()]
        if kind in ("awc", "atc", "grad"):  # (the window optimizers train enough elsewhere)
            train(opt, model, 120)
            assert_converged(model, f"{kind} of a user subclass")
    finally:
        release(opt)


def test_param_groups_with_different_options():
    model = make_model()
    for kind in ("awc", "atc"):
        m = copy.deepcopy(model)
        g = [{"params": [m[0].weight], "lr": 0.5}, {"params": [m[0].bias], "lr": 0.3}]
        opt = build(kind, m, base=torch.optim.SGD(g), comm=NA)
        assert [grp["lr"] for grp in opt.param_groups] == [0.5, 0.3]
        train(opt, m, 120)
        assert_converged(m, f"{kind} with two param groups")


# ---- state_dict -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind_comm", ALL_KINDS, ids=lambda kc: kc[0])
def test_state_dict_round_trip(kind_comm):
    kind, comm = kind_comm
    model = make_model()
    opt = build(kind, model, base=torch.optim.Adam(model.parameters(), lr=0.05), comm=comm)
    try:
        train(opt, model, 3)
        sd = opt.state_dict()
        assert len(sd["state"]) == 2 and all("exp_avg" in s for s in sd["state"].values())
        # the plain optimizer reads it, and gives back an equal one
        plain = torch.optim.Adam(model.parameters(), lr=1.0)
        plain.load_state_dict(copy.deepcopy(sd))
        assert plain.param_groups[0]["lr"] == 0.05
        fresh = build(kind, model, base=torch.optim.Adam(model.parameters(), lr=1.0), comm=comm) \
            if kind not in ("win_put", "pull_get", "push_sum") else None
        target = fresh or plain
        target.load_state_dict(plain.state_dict())
        sd2 = target.state_dict()
        assert sd2["param_groups"] == sd["param_groups"]
        for pid, s in sd["state"].items():
            for key, value in s.items():
                assert torch.equal(sd2["state"][pid][key], value), key
    finally:
        release(opt)


# ---- learning-rate schedulers ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_lr_scheduler_changes_the_lr_used(kind):
    """StepLR(gamma=0.5) halves the lr every step: with empty communication the
    trajectory is the plain optimizer's under the same schedule."""
    model = make_model()
    opt = build(kind, model, base=BASES["SGD"](model.parameters()), comm=EM)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    got = train(opt, model, 5, record=True, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 5)
    want = reference_history("SGD", 5, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["awc", "grad"])
def test_lr_scheduler_made_before_wrapping(kind):
    """A scheduler made on the plain optimizer before wrapping (it patches that
    optimizer's step) must leave the wrapper's step, which communicates, in
    charge; its lr changes reach the wrapper through the shared param groups.
    (The patched step was copied onto the wrapper: no communication at all.)"""
    model = make_model()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    base = BASES["SGD"](model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(base, step_size=2, gamma=0.1)
    opt = build(kind, model, base=base, comm=NA)
    assert "step" not in vars(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        train(opt, model, 5, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** 2)
    assert not opt._bf_handles
    if SIZE > 1:  # it communicated: the ranks, each on its own data, end far closer than alone
        alone = make_model()
        bf.broadcast_parameters(alone.state_dict(), root_rank=0)
        solo = BASES["SGD"](alone.parameters())
        train(solo, alone, 5, scheduler=torch.optim.lr_scheduler.StepLR(solo, step_size=2, gamma=0.1))
        assert spread(model) < 0.5 * spread(alone), (spread(model), spread(alone))


def test_lr_scheduler_with_gradient_allreduce():
    model = make_model()
    bf.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = build("grad", model, base=BASES["SGD"](model.parameters()))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    got = train(opt, model, 5, record=True, scheduler=sched)
    want = reference_history("SGD", 5, x=X, y=Y, seed=1000,
                             scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.1))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


# ---- misuse ----------------------------------------------------------------------------------------
FACTORIES = {
    "awc": bf.DistributedAdaptWithCombineOptimizer,
    "atc": bf.DistributedAdaptThenCombineOptimizer,
    "grad": bf.DistributedGradientAllreduceOptimizer,
    "win_put": bf.DistributedWinPutOptimizer,
    "pull_get": DistributedPullGetOptimizer,
    "push_sum": DistributedPushSumOptimizer,
}


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_parameters_not_in_the_model(kind):
    model, other = make_model(), make_model()
    with pytest.raises(ValueError):
        FACTORIES[kind](torch.optim.SGD(other.parameters(), lr=0.1), model)


def test_model_must_be_modules():
    model = make_model()
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "model")
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                                                communication_type="neighbor.allreduce")
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(model, model)
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                                                num_steps_per_communication=0)


@pytest.mark.parametrize("kind", ["awc", "atc", "grad"])
def test_list_of_models_with_identical_names(kind):
    """Two models whose parameters have the same names ('0.weight', ...) are told
    apart by their index in the list, and train together."""
    m1, m2 = make_model(), make_model(seed=7 + RANK)
    opt_base = torch.optim.SGD(list(m1.parameters()) + list(m2.parameters()), lr=0.5)
    if kind == "grad":
        bf.broadcast_parameters(m1.state_dict(), 0)
        bf.broadcast_parameters(m2.state_dict(), 0)
    opt = build(kind, [m1, m2], base=opt_base, comm=NA)
    names = sorted(opt._bf_names.values())
    assert names == ["0.0.bias", "0.0.weight", "1.0.bias", "1.0.weight"]
    for t in range(120):
        opt.zero_grad()
        (F.mse_loss(m1(XR), YR) + F.mse_loss(m2(XR), YR)).backward()
        opt.step()
    assert_converged(m1, f"{kind}: first of two models")
    assert_converged(m2, f"{kind}: second of two models")


def test_optimizer_covering_only_part_of_the_model():
    model = make_model()
    extra = nn.Linear(3, 3)
    both = nn.Sequential(model[0], extra)
    opt = bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), both)
    assert sorted(opt._bf_names.values())[:2] == ["0.bias", "0.weight"]
    train(opt, model, 120)
    assert_converged(model, "optimizer over a sub-model")


def test_zero_grad_with_communication_pending():
    # AWC (and the window optimizers) communicate parameters from the forward:
    # zero_grad() between forward and backward is the usual loop, as in 0.3.
    for kind in ("awc", "win_put"):
        model = make_model()
        opt = FACTORIES[kind](BASES["SGD"](model.parameters()), model)
        loss = F.mse_loss(model(XR), YR)  # the forward started the communication
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert not opt._bf_handles, kind
        opt.zero_grad()
        if kind == "win_put":
            opt.unregister_hooks()
            bf.win_free()

    model = make_model()
    opt = build("atc", model, comm=NA)
    F.mse_loss(model(XR), YR).backward()  # the backward started it
    if SIZE > 1:
        with pytest.raises(AssertionError):
            opt.zero_grad()
    opt.synchronize()
    opt.zero_grad()

    model = make_model()
    opt = build("grad", model)
    F.mse_loss(model(XR), YR).backward()
    if SIZE > 1:
        with pytest.raises(AssertionError):
            opt.zero_grad()
    opt.step()
    opt.zero_grad()


def test_skip_synchronize():
    """synchronize() then step() inside skip_synchronize(): the usual way to clip
    gradients or inspect the combined parameters between the two."""
    model = make_model()
    opt = build("awc", model, comm=NA)
    for _ in range(120):
        opt.zero_grad()
        F.mse_loss(model(XR), YR).backward()
        opt.synchronize()
        with opt.skip_synchronize():
            opt.step()
    assert_converged(model, "AWC with skip_synchronize")

# ---- known bugs (kept last so that the rest of the file runs first) -------------------------------
def test_the_same_parameter_under_two_names_is_rejected():
    """A model given twice (or a model and one of its submodules) names each
    parameter twice: the wrapper would register its hooks twice and communicate
    under two names, so it must refuse like any duplicate name."""
    model = make_model()
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model, model])
    with pytest.raises(ValueError):
        bf.DistributedAdaptWithCombineOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [model, model[0]])


@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_lr_from_load_state_dict_is_used(kind):
    """After load_state_dict (which broadcast_optimizer_state also calls) the loaded
    param-group options are the ones used. lr=0 must freeze the parameters."""
    model = make_model()
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.5), comm=EM)
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.0
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.0
    before = flat(model)
    train(opt, model, 2)
    assert torch.equal(flat(model), before), "the lr loaded by load_state_dict was not used"


@pytest.mark.parametrize("kind", ["awc", "atc"])
def test_param_group_added_later_is_trained(kind):
    """add_param_group (e.g. unfreezing a layer for fine-tuning) after the wrapper
    is built: the new group's parameters must be updated too."""
    model = nn.Sequential(nn.Linear(D_IN, D_IN), nn.Linear(D_IN, D_OUT))
    opt = build(kind, model, base=torch.optim.SGD(model[0].parameters(), lr=0.1), comm=EM)
    opt.add_param_group({"params": model[1].parameters(), "lr": 0.1})
    before = model[1].weight.detach().clone()
    train(opt, model, 1)
    assert not torch.equal(model[1].weight.detach(), before), "the added param group was not stepped"


# ---- found in review: accumulation, closures, parameters outside called modules, uneven use ----
def _average_of_local_sgd(model, lr, batches):
    """mean over ranks of (x_r - lr * sum of the batches' gradients at x_r)."""
    ref = copy.deepcopy(model)
    ref.zero_grad()
    for x, y in batches:
        F.mse_loss(ref(x), y).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= lr * p.grad
    return gathered(ref).mean(0)


def test_atc_gradient_accumulation_applies_the_summed_gradient_once():
    """num_steps_per_communication=2 with two backward passes per step(): the
    local step uses g1 + g2, both taken at x (it stepped after each backward:
    g1 applied twice, g2 taken at a moved point)."""
    model = make_model()
    opt = build("atc", model, base=torch.optim.SGD(model.parameters(), lr=0.1), comm=CT.allreduce, n=2)
    for t in range(3):
        batches = [(XR[i::4], YR[i::4]) for i in (t % 2, t % 2 + 2)]
        expected = _average_of_local_sgd(model, 0.1, batches)
        opt.zero_grad()
        for x, y in batches:
            F.mse_loss(model(x), y).backward()
        opt.step()
        assert worst((flat(model) - expected).abs().max().item()) < 1e-5


def _mse_closure(opt, model):
    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(XR), YR)
        loss.backward()
        return loss
    return closure


def test_awc_step_with_a_closure_matches_the_usual_loop():
    """step(closure): the closure's forward starts the communication; the
    combined values are adopted first and the gradient is applied to them (the
    gradient step was lost: overwritten by the next step's combine)."""
    a, b = make_model(seed=5 + RANK), make_model(seed=5 + RANK)
    oa = build("awc", a, base=torch.optim.SGD(a.parameters(), lr=0.1), comm=CT.allreduce)
    ob = build("awc", b, base=torch.optim.SGD(b.parameters(), lr=0.1), comm=CT.allreduce)
    train(ob, b, 4)
    closure = _mse_closure(oa, a)
    for _ in range(4):
        assert oa.step(closure) is not None
    assert not oa._bf_handles
    assert worst((flat(a) - flat(b)).abs().max().item()) < 1e-6


class _Shared(nn.Module):
    """A parameter in an nn.ParameterList (never called), a linear layer whose
    weight is only read as an attribute, and a layer applied twice."""
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scales = nn.ParameterList([nn.Parameter(torch.full((3,), float(RANK)))])
        self.tied = nn.Linear(3, 3)
        with torch.no_grad():
            self.tied.weight.fill_(float(RANK))

    def forward(self, x):
        h = torch.tanh(self.lin(x)) * self.scales[0]
        return self.lin(h) + x @ self.tied.weight


@pytest.mark.parametrize("kind", ["awc", "win_put"])
def test_parameters_of_modules_never_called_communicate_once_per_forward(kind):
    """(They never communicated: hooks sat only on the modules that ran.) And a
    layer applied twice in one forward counts once: with two steps per
    communication nothing moves after the first step (lr 0)."""
    model = _Shared()
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.0), comm=CT.allreduce, n=2)
    before = flat(model).clone()
    x = torch.randn(4, 3)
    for step in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        if step == 0:
            assert all_true(torch.equal(flat(model), before))
    scale, tied = model.scales[0].detach(), model.tied.weight.detach()
    if SIZE > 1:
        assert all_true(not torch.equal(scale, torch.full((3,), float(RANK))))
        assert all_true(not torch.equal(tied, torch.full((3, 3), float(RANK))))
    if kind == "awc":
        mean = (SIZE - 1) / 2
        assert all_true(torch.allclose(scale, torch.full((3,), mean)) and torch.allclose(tied, torch.full((3, 3), mean)))
    release(opt)


@pytest.mark.parametrize("kind_comm", [("grad", None), ("awc", CT.neighbor_allreduce), ("atc", CT.neighbor_allreduce),
                                       ("awc", CT.allreduce)],
                         ids=lambda kc: f"{kc[0]}-{kc[1].name if kc[1] else ''}")
def test_a_rank_that_skips_a_layer_does_not_hang(kind_comm):
    """The last rank never uses layer b: its b communicates anyway (gradient
    allreduce: as zeros), so nobody waits for it (before: a hang)."""
    kind, comm = kind_comm
    torch.manual_seed(7)  # the same start on every rank; different data
    model = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)})
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.1), comm=comm)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + RANK))
    for _ in range(3):
        before_b = bf.allgather(model["b"].weight.detach().clone()[None])
        opt.zero_grad()
        out = model["a"](x) + (model["b"](x) if RANK != SIZE - 1 else 0)
        out.pow(2).mean().backward()
        opt.step()
    if kind == "grad":
        assert worst(spread(model)) < 1e-6  # every rank took the same (averaged) steps
    elif comm == CT.allreduce and RANK == SIZE - 1:
        # b got no gradient here: it is exactly the average of the ranks' b before the step
        assert torch.allclose(model["b"].weight, before_b.mean(0), atol=1e-6)


def test_ranks_with_different_models_are_refused_at_construction():
    if SIZE == 1:
        pytest.skip("needs two ranks to differ")
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(1 + (RANK == SIZE - 1))])
    with pytest.raises(ValueError, match="the ranks' models differ"):
        build("grad", model)


def test_a_distributed_optimizer_cannot_be_wrapped_again():
    model = torch.nn.Linear(2, 1)
    opt = bf.DistributedGradientAllreduceOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model=model)
    with pytest.raises(ValueError, match="already a BlueFog distributed optimizer"):
        bf.DistributedAdaptWithCombineOptimizer(opt, model=model)
    opt.unregister_hooks()


def test_communication_type_must_be_a_communication_type():
    model = make_model()
    opt = build("awc", model, comm=CT.allreduce)
    with pytest.raises(ValueError, match="communication_type must be a CommunicationType"):
        opt.communication_type = "allreduce"
    assert opt.communication_type == CT.allreduce
    opt.communication_type = CT.empty
    assert opt.communication_type == CT.empty


def test_failed_communication_leaves_the_wrapper_usable():
    """A step whose communication fails raises on every rank; the next one
    works (the failed handles were kept: zero_grad raised 'pending' forever)."""
    if SIZE == 1:
        pytest.skip("needs neighbors")
    model = make_model()
    opt = build("awc", model, comm=CT.neighbor_allreduce)
    opt.src_weights = {SIZE + 7: 0.5}  # not an in-neighbor
    opt.self_weight = 0.5
    with pytest.raises(ValueError):
        train(opt, model, 1)
    opt.src_weights = opt.self_weight = None
    opt.zero_grad()
    train(opt, model, 2)


@pytest.mark.parametrize("kind_comm", [("grad", None), ("awc", CT.allreduce), ("atc", CT.allreduce)],
                         ids=lambda kc: kc[0])
def test_unregister_hooks_stops_communication(kind_comm):
    """After unregister_hooks() the wrapper steps like the plain optimizer:
    nothing communicates (also not the parameters a step finds uncommunicated)."""
    kind, comm = kind_comm
    model = make_model()
    opt = build(kind, model, base=torch.optim.SGD(model.parameters(), lr=0.0), comm=comm)
    opt.unregister_hooks()
    before = flat(model).clone()
    train(opt, model, 2)
    assert torch.equal(flat(model), before)
    assert not opt._bf_handles


def test_submodules_called_directly_keep_communicating():
    """A loop that calls the model's submodules itself (the wrapped model's
    own forward never runs): every call communicates, every step (a window
    optimizer stopped after its first step in one draft of the per-forward
    bookkeeping)."""
    from bluefog.common.basics import get_basics
    torch.manual_seed(3 + RANK)
    model = nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 2)})
    opt = build("win_put", model, base=torch.optim.SGD(model.parameters(), lr=0.1))
    per_step = []
    for _ in range(3):
        before = get_basics().win_transfer_calls()
        opt.zero_grad()
        model["b"](model["a"](torch.randn(3, 4))).sum().backward()
        opt.step()
        per_step.append(get_basics().win_transfer_calls() - before)
    if SIZE > 1:
        assert per_step[0] > 0 and per_step == [per_step[0]] * 3, per_step
    release(opt)


def test_gradient_allreduce_leaves_a_parameter_no_rank_used_alone():
    """A head no rank uses gets no gradient, as in torch: AdamW's weight decay
    does not move it (the zeros sent so that no rank waits come back as None)."""
    torch.manual_seed(11)
    model = nn.ModuleDict({"a": nn.Linear(4, 3), "unused": nn.Linear(4, 3)})
    opt = build("grad", model, base=torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5))
    before = model["unused"].weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model["a"](torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    assert model["unused"].weight.grad is None
    assert torch.equal(model["unused"].weight, before)


def test_awc_with_lbfgs_and_a_closure():
    """An optimizer that re-evaluates its closure (LBFGS) works under AWC: each
    evaluation's communication is combined before the next."""
    model = make_model(seed=21)
    opt = build("awc", model, base=torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3), comm=CT.allreduce)
    closure = _mse_closure(opt, model)
    for _ in range(2):
        opt.step(closure)
    assert not opt._bf_handles
    assert worst(full_mse(model)) < F.mse_loss(make_model(seed=21)(X), Y).item()


def test_window_names_are_bluefog_03s():
    """The window wrappers name their windows as BlueFog 0.3 did: the bare
    parameter name without a window_prefix, "<window_prefix>.<name>" with one.
    A later wrapper without a prefix, whose bare names would clash with the
    first's, gets its kind ("push_sum.<name>", "win_put#2.<name>"), which no
    window_prefix can clash with either."""
    from bluefog.torch import optimizers as wrappers
    assert bf.get_current_created_window_names() == []
    saved = dict(wrappers._PREFIX_COUNTS)
    wrappers._PREFIX_COUNTS.clear()  # as in a fresh process (on every rank alike)
    try:
        built = []
        for make, prefix in ((bf.DistributedWinPutOptimizer, None), (bf.DistributedPushSumOptimizer, None),
                             (bf.DistributedWinPutOptimizer, "wp"), (bf.DistributedWinPutOptimizer, "win_put"),
                             (bf.DistributedWinPutOptimizer, None)):
            model = make_model(seed=len(built))
            built.append(make(torch.optim.SGD(model.parameters(), lr=0.1), model, window_prefix=prefix))
        expected = sorted(f"{p}{n}" for p in ("", "push_sum.", "wp.", "win_put#1.", "win_put#2.")
                          for n in ("0.bias", "0.weight"))
        assert bf.get_current_created_window_names() == (expected if SIZE > 1 else [])
        for opt in built:
            release(opt)
        assert bf.get_current_created_window_names() == []
    finally:
        for key, count in saved.items():
            wrappers._PREFIX_COUNTS[key] = max(count, wrappers._PREFIX_COUNTS.get(key, 0))

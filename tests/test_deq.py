"""Tests for monai_ext.deq: fixed-point solvers and the DEQ layer with implicit gradients."""

from __future__ import annotations

import copy
import json
import math
import time
import warnings

import pytest
import torch
from torch import nn

from monai_ext.deq import DEQ, SolverInfo, anderson_solve, fixed_point_solve, get_solver, register_solver, solver_names
from monai_ext.deq import solvers as solvers_module

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def linear_contraction(batch=3, n=32, top_eigenvalue=0.95, dtype=F64, device="cpu", seed=0):
    """Batched z = A z + b with ||A||_2 < 1 and slow modes (eigenvalues up to ``top_eigenvalue``).

    Returns the map (on ``device``, in ``dtype``), its fixed point solve(I - A, b) (float64, CPU) and A (float64, CPU).
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=F64))
    eigenvalues = torch.linspace(-0.5, top_eigenvalue, n, dtype=F64)
    a = q @ torch.diag_embed(eigenvalues.expand(batch, n)) @ q.transpose(1, 2)
    noise = torch.randn(batch, n, n, generator=g, dtype=F64)
    a = a + 0.01 * noise / torch.linalg.matrix_norm(noise, ord=2)[:, None, None]
    b = torch.randn(batch, n, generator=g, dtype=F64)
    z_star = torch.linalg.solve(torch.eye(n, dtype=F64) - a, b)
    a_map, b_map = a.to(device, dtype), b.to(device, dtype)
    return (lambda z: torch.bmm(a_map, z[..., None])[..., 0] + b_map), z_star, a


def tanh_map(z, x, weight, input_weight, bias):
    """z -> tanh(W z + U x + b), a contraction when ||W||_2 < 1."""
    return torch.tanh(z @ weight.T + x @ input_weight.T + bias)


class TanhLayer(nn.Module):
    """``tanh_map`` with W, U, b as module parameters."""

    def __init__(self, n=8, d=5, weight_norm=0.6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(n, n, generator=g, dtype=F64)
        self.weight = nn.Parameter(weight * weight_norm / torch.linalg.matrix_norm(weight, ord=2))
        self.input_weight = nn.Parameter(torch.randn(n, d, generator=g, dtype=F64) / math.sqrt(d))
        self.bias = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=F64))

    def forward(self, z, x):
        return tanh_map(z, x, self.weight, self.input_weight, self.bias)


def rel_err(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def grads_of(tensors):
    return torch.cat([t.grad.flatten() for t in tensors])


def deq_gradients(deq, layer, x, weights, z0=None):
    """Backprop sum(weights * z) through ``deq``; return the equilibrium and d/d(params, x)."""
    x = x.clone().requires_grad_()
    layer.zero_grad()
    z, info = deq(x, z0=z0)
    (weights * z).sum().backward()
    return z.detach(), grads_of([*layer.parameters(), x]), info


# ---------------------------------------------------------------- solvers


@pytest.mark.parametrize("solver", ["picard", "fixed_point", "anderson", "broyden"])
def test_solver_finds_fixed_point_of_linear_contraction(solver):
    f, z_star, _ = linear_contraction()
    z, info = fixed_point_solve(f, torch.zeros_like(z_star), solver=solver, tol=1e-10)
    assert info.converged and info.stop_reason == "converged"
    assert info.rel_residual <= 1e-10 and max(info.rel_residual_batch) == info.rel_residual
    assert len(info.residual_trace) == info.nstep <= 500
    # error <= residual / (1 - ||A||) per element
    for b in range(z.shape[0]):
        assert rel_err(z[b], z_star[b]) < 1e-10 / (1 - 0.96)


def test_anderson_needs_fewer_iterations_than_plain_iteration():
    f, z_star, _ = linear_contraction()
    counts = {}
    for solver in ("picard", "anderson", "broyden"):
        _, info = fixed_point_solve(f, torch.zeros_like(z_star), solver=solver, tol=1e-8)
        assert info.converged
        counts[solver] = info.nstep
    print(f"\niterations to tol 1e-8 on a linear contraction (||A|| ~ 0.95): {counts}")
    assert counts["anderson"] < counts["picard"] / 2
    assert counts["broyden"] < counts["picard"]


def test_solvers_keep_shape_dtype_and_solve_each_batch_element():
    # z = a_b * roll(z) / 2 + a_b * z / 2 + 1 on (B, C, H, W) float32, a different contraction per batch element
    a = torch.tensor([0.5, 0.9, 0.98]).view(3, 1, 1, 1)

    def f(z):
        return a * (0.5 * torch.roll(z, 1, dims=-1) + 0.5 * z) + 1.0

    z0 = torch.zeros(3, 2, 4, 5)
    for solver in solver_names():
        z, info = fixed_point_solve(f, z0, solver=solver, tol=1e-6)
        assert z.shape == z0.shape and z.dtype == torch.float32 and not z.requires_grad
        assert info.converged, (solver, info.rel_residual)
        assert torch.allclose(z, (1 / (1 - a)).expand_as(z), rtol=1e-4), solver
        assert len(info.rel_residual_batch) == 3


def test_anderson_fixed_points_for_float32_and_float64_agree():
    f32, z_star, _ = linear_contraction(n=16, dtype=torch.float32)
    z32, info32 = anderson_solve(f32, torch.zeros(3, 16), tol=1e-6)
    assert info32.converged and z32.dtype == torch.float32
    assert rel_err(z32.double(), z_star) < 1e-4


def test_info_is_plain_and_loggable():
    f, z_star, _ = linear_contraction(n=8)
    _, info = fixed_point_solve(f, torch.zeros_like(z_star), solver="anderson", tol=1e-8)
    record = info.as_dict()
    assert set(record) >= {"solver", "nstep", "converged", "rel_residual", "abs_residual", "residual_trace"}
    assert record["solver"] == "anderson" and isinstance(record["nstep"], int)
    assert isinstance(record["converged"], bool) and all(type(r) is float for r in record["residual_trace"])
    assert json.loads(json.dumps(record)) == record
    # the trace ends at the residual of the returned solution here, since the last iterate is the best one
    assert record["residual_trace"][-1] == pytest.approx(record["rel_residual"])


def test_unknown_solver_name_lists_known_names():
    with pytest.raises(ValueError, match="newton") as error:
        get_solver("newton")
    for name in ("anderson", "broyden", "fixed_point", "picard"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="anderson"):
        DEQ(TanhLayer(), solver="andersen")
    with pytest.raises(ValueError, match="broyden"):
        DEQ(TanhLayer(), backward_solver="broyd")


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": -5}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"beta": 0.0}, "beta"),
        ({"m": 0}, "m"),
        ({"lam": -1.0}, "lam"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, argument):
    f, z_star, _ = linear_contraction(n=4)
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        anderson_solve(f, torch.zeros_like(z_star), **kwargs)


def test_layer_rejects_bad_arguments():
    for kwargs, argument in [
        ({"tol": 0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"backward_tol": -1.0}, "backward_tol"),
        ({"backward_max_iter": 0}, "backward_max_iter"),
        ({"grad": "phantom"}, "grad"),
        ({"grad": "unrolled", "unroll_steps": 0}, "unroll_steps"),
    ]:
        with pytest.raises(ValueError, match=rf"^{argument} must"):
            DEQ(TanhLayer(), **kwargs)


def test_map_that_changes_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        fixed_point_solve(lambda z: z[:, :2], torch.zeros(2, 3))


def test_custom_solver_can_be_registered(monkeypatch):
    monkeypatch.setattr(solvers_module, "_SOLVERS", dict(solvers_module._SOLVERS))
    register_solver("damped_picard", lambda f, z0, **kw: solvers_module.picard_solve(f, z0, beta=0.5, **kw))
    assert "damped_picard" in solver_names()
    f, z_star, _ = linear_contraction(n=8, top_eigenvalue=0.5)
    z, info = fixed_point_solve(f, torch.zeros_like(z_star), solver="damped_picard", tol=1e-10)
    assert info.converged and rel_err(z, z_star) < 1e-8
    with pytest.raises(ValueError, match="already registered"):
        register_solver("anderson", solvers_module.picard_solve)


def test_non_contractive_map_stops_with_warning():
    z0 = torch.zeros(2, 3, dtype=F64)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match=r"did not converge.*relative residual .* after 500 iterations") as record:
        z, info = fixed_point_solve(lambda z: 2 * z + 1, z0, solver="picard")
    assert time.perf_counter() - start < 5
    assert not info.converged and info.stop_reason == "max_iter" and info.nstep == 500
    assert f"{info.rel_residual:.3e}" in str(record[0].message)
    assert torch.isfinite(z).all() and info.rel_residual > 0.5


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_map_without_fixed_point_stops_with_warning(solver):
    # f(z) = z + (||z|| + 1) c with ||c|| = 1 has no fixed point, and its relative residual is >= 1 everywhere, also
    # far out (a map like z + 1 + sin(z) / 2 has a relative residual that vanishes as ||z|| grows: Broyden jumps there)
    c = torch.nn.functional.normalize(torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0)), dim=1)

    def f(z):
        return z + (torch.linalg.vector_norm(z, dim=1, keepdim=True) + 1) * c

    with pytest.warns(RuntimeWarning, match=rf"\({solver}\) did not converge.*after 100 iterations"):
        z, info = fixed_point_solve(f, torch.zeros(2, 4, dtype=F64), solver=solver, max_iter=100)
    assert not info.converged and info.nstep == 100 and info.rel_residual > 0.99 and torch.isfinite(z).all()


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_nan_in_iterates_stops_and_reports(solver):
    calls = []

    def f(z):
        calls.append(1)
        out = 0.5 * torch.cos(z) + 1  # nonlinear, so that no solver is done within 3 iterations
        return out if len(calls) < 4 else out * float("nan")

    with pytest.warns(RuntimeWarning, match="non-finite values at iteration 4"):
        z, info = fixed_point_solve(f, torch.zeros(2, 3), solver=solver, tol=1e-12)
    assert len(calls) == info.nstep == 4
    assert not info.converged and info.stop_reason == "non_finite"
    assert torch.isfinite(z).all() and math.isfinite(info.rel_residual)


def test_anderson_survives_singular_gram_system():
    # scalar unknowns make every Gram matrix of rank one; with lam=0 the system is singular
    z, info = anderson_solve(torch.cos, torch.zeros(4, 1, dtype=F64), lam=0.0, m=5, tol=1e-12)
    assert info.converged and torch.isfinite(z).all()
    assert torch.allclose(z, torch.full_like(z, 0.7390851332151607))
    # identical iterates (zero residuals) make the Gram matrix exactly zero
    z, info = anderson_solve(lambda z: torch.ones_like(z), torch.ones(2, 3), lam=0.0, tol=1e-6)
    assert info.converged and info.nstep == 1 and torch.equal(z, torch.ones(2, 3))


def test_zero_fixed_point_converges_thanks_to_eps():
    z, info = fixed_point_solve(lambda z: 0.5 * z, torch.ones(2, 3, dtype=F64), solver="picard", tol=1e-6)
    assert info.converged and float(z.abs().max()) < 1e-10


# ---------------------------------------------------------------- DEQ layer: implicit gradients


def test_implicit_gradient_matches_central_finite_differences():
    """Gradients w.r.t. W, U, b passed as extra inputs and w.r.t. x, float64, against central differences."""
    layer = TanhLayer(n=6, d=4, weight_norm=0.7, seed=1)
    params = [p.detach().clone() for p in layer.parameters()]
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(2, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    deq = DEQ(tanh_map, solver="anderson", tol=1e-14, max_iter=200)

    def loss(x, *params):
        z, _ = deq(x, *params, z0=torch.zeros(2, 6, dtype=F64))
        return (weights * z).sum()

    inputs = [t.clone().requires_grad_() for t in (x, *params)]
    loss(*inputs).backward()
    assert deq.backward_info.converged
    implicit = grads_of(inputs)

    h, finite_diff = 1e-5, []
    with torch.no_grad():
        for i, t in enumerate(inputs):
            for j in range(t.numel()):
                shifted = [u.detach().clone() for u in inputs]
                shifted[i].view(-1)[j] += h
                plus = loss(*shifted)
                shifted[i].view(-1)[j] -= 2 * h
                finite_diff.append((plus - loss(*shifted)) / (2 * h))
    error = rel_err(implicit, torch.stack(finite_diff))
    print(f"\nimplicit gradient vs central finite differences ({implicit.numel()} entries): rel. error {error:.2e}")
    assert error <= 1e-5


@pytest.mark.parametrize("solver", ["anderson", "picard", "broyden"])
def test_implicit_gradient_matches_unrolled_autograd_at_convergence(solver):
    layer = TanhLayer(weight_norm=0.6)
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    z0 = torch.zeros(3, 8, dtype=F64)
    deq = DEQ(layer, solver=solver, tol=1e-13, max_iter=300)
    z_implicit, implicit, info = deq_gradients(deq, layer, x, weights, z0=z0)
    assert info.converged and deq.backward_info.converged and deq.backward_info.solver == solver

    # reference: plain iteration with autograd through all 200 steps
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    z = z0
    for _ in range(200):
        z = layer(z, xr)
    (weights * z).sum().backward()
    unrolled = grads_of([*layer.parameters(), xr])
    error = rel_err(implicit, unrolled)
    print(f"\n{solver}: implicit vs 200-step unrolled autograd gradient: rel. error {error:.2e}")
    assert rel_err(z_implicit, z.detach()) < 1e-12
    assert error < 1e-6


def test_same_fixed_point_and_gradient_as_torchdeq():
    torchdeq = pytest.importorskip("torchdeq")
    layer = TanhLayer(weight_norm=0.6, seed=6)
    reference_layer = copy.deepcopy(layer)
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(7))
    weights = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(8))
    z0 = torch.zeros(3, 8, dtype=F64)

    deq = DEQ(layer, solver="anderson", tol=1e-13, max_iter=200)
    z, grads, _ = deq_gradients(deq, layer, x, weights, z0=z0)

    reference = torchdeq.get_deq(core="sliced", ift=True, f_solver="anderson", b_solver="anderson",
                                 f_max_iter=200, b_max_iter=200, f_tol=1e-13, b_tol=1e-13)
    xr = x.clone().requires_grad_()
    z_out, _ = reference(lambda z: reference_layer(z, xr), z0)
    (weights * z_out[-1]).sum().backward()
    reference_grads = grads_of([*reference_layer.parameters(), xr])

    z_error, grad_error = rel_err(z, z_out[-1].detach()), rel_err(grads, reference_grads)
    print(f"\nvs torchdeq 0.1.0 (ift=True): fixed point rel. error {z_error:.2e}, gradient rel. error {grad_error:.2e}")
    assert z_error < 1e-10
    assert grad_error < 1e-5


def test_gradient_flows_to_module_parameters_and_input_with_default_z0():
    layer = TanhLayer(n=5, d=5)
    deq = DEQ(layer, tol=1e-8)
    x = torch.randn(2, 5, dtype=F64, requires_grad=True)
    z, info = deq(x)  # z0 defaults to zeros shaped like x
    assert z.shape == (2, 5) and info.converged
    z.square().sum().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_backward_solve_that_does_not_converge_warns():
    layer = TanhLayer(weight_norm=0.9)
    deq = DEQ(layer, tol=1e-10, backward_solver="picard", backward_tol=1e-12, backward_max_iter=3)
    z, info = deq(torch.randn(2, 5, dtype=F64), z0=torch.zeros(2, 8, dtype=F64))
    assert info.converged
    with pytest.warns(RuntimeWarning, match=r"backward.*\(picard\) did not converge.*after 3 iterations"):
        z.sum().backward()
    assert not deq.backward_info.converged and deq.backward_info.nstep == 3


def test_forward_that_does_not_converge_warns_in_layer():
    with pytest.warns(RuntimeWarning, match=r"DEQ forward solve \(picard\) did not converge.*after 7 iterations"):
        _, info = DEQ(TanhLayer(weight_norm=0.9), solver="picard", tol=1e-12, max_iter=7)(
            torch.randn(2, 5, dtype=F64), z0=torch.zeros(2, 8, dtype=F64))
    assert not info.converged and info.nstep == 7


def test_output_without_grad_equals_output_with_grad():
    layer = TanhLayer()
    x, z0 = torch.randn(2, 5, dtype=F64), torch.zeros(2, 8, dtype=F64)
    deq = DEQ(layer, tol=1e-10)
    with torch.no_grad():
        z_eval, _ = deq(x, z0=z0)
    z_train, _ = deq(x, z0=z0)
    assert z_eval.grad_fn is None and z_train.grad_fn is not None
    assert torch.equal(z_eval, z_train.detach())


def test_backward_twice_with_retained_graph_gives_the_same_gradient():
    layer = TanhLayer()
    deq = DEQ(layer, tol=1e-12)
    z, _ = deq(torch.randn(2, 5, dtype=F64), z0=torch.zeros(2, 8, dtype=F64))
    z.sum().backward(retain_graph=True)
    first = layer.weight.grad.clone()
    layer.zero_grad()
    z.sum().backward()
    assert torch.allclose(layer.weight.grad, first, rtol=1e-12)


# ---------------------------------------------------------------- DEQ layer: other gradient modes


def test_one_step_and_unrolled_gradients_approximate_the_implicit_one():
    layer = TanhLayer(weight_norm=0.2, seed=9)
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(10))
    weights = torch.randn(3, 8, dtype=F64, generator=torch.Generator().manual_seed(11))
    z0 = torch.zeros(3, 8, dtype=F64)
    common = dict(solver="anderson", tol=1e-13)
    z_imp, implicit, _ = deq_gradients(DEQ(layer, **common), layer, x, weights, z0)
    z_one, one_step, _ = deq_gradients(DEQ(layer, grad="one_step", **common), layer, x, weights, z0)
    _, unrolled_1, _ = deq_gradients(DEQ(layer, grad="unrolled", unroll_steps=1, **common), layer, x, weights, z0)
    z_unr, unrolled_30, _ = deq_gradients(DEQ(layer, grad="unrolled", unroll_steps=30, **common), layer, x, weights, z0)

    cosine = float(torch.nn.functional.cosine_similarity(one_step, implicit, dim=0))
    unrolled_error = rel_err(unrolled_30, implicit)
    print(f"\none-step vs implicit: cosine {cosine:.4f}, rel. error {rel_err(one_step, implicit):.2e}; "
          f"30-step unrolled vs implicit: rel. error {unrolled_error:.2e}")
    assert torch.allclose(z_one, z_imp, rtol=1e-12) and torch.allclose(z_unr, z_imp, rtol=1e-12)
    assert cosine > 0.9
    assert rel_err(one_step, implicit) > 1e-4  # approximate: it is not the implicit gradient
    assert torch.equal(unrolled_1, one_step)
    assert unrolled_error < 1e-5


def saved_tensor_bytes(fn):
    """Bytes of all tensors autograd saves for backward while ``fn`` runs, and ``fn``'s result."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


class SlowLayer(nn.Module):
    """z -> 0.95 z + 0.05 tanh(W z) + x: a contraction, slow enough that Picard needs > 200 iterations for 1e-12."""

    def __init__(self, n=64, dtype=F64):
        super().__init__()
        self.linear = nn.Linear(n, n, bias=False, dtype=dtype)

    def forward(self, z, x):
        return 0.95 * z + 0.05 * torch.tanh(self.linear(z)) + x


def test_forward_keeps_no_graph_whatever_the_number_of_iterations():
    torch.manual_seed(0)
    layer, x = SlowLayer(), torch.randn(4, 64, dtype=F64)
    saved = {}
    for max_iter in (10, 200):
        deq = DEQ(layer, solver="picard", tol=1e-12, max_iter=max_iter, backward_solver="anderson", backward_tol=1e-8,
                  backward_max_iter=200)
        with pytest.warns(RuntimeWarning, match=f"after {max_iter} iterations"):
            saved[max_iter], (z, info) = saved_tensor_bytes(lambda: deq(x))
        assert info.nstep == max_iter  # ran every iteration
        z.sum().backward()  # and the saved graph is enough for the implicit gradient
        assert deq.backward_info.converged
    for k in (1, 5, 50):
        deq = DEQ(layer, solver="picard", tol=1e-12, max_iter=10, grad="unrolled", unroll_steps=k)
        with pytest.warns(RuntimeWarning):
            saved[f"unrolled {k}"], _ = saved_tensor_bytes(lambda: deq(x))
    print(f"\nbytes saved for backward during the forward call: {saved}")
    assert saved[10] == saved[200] > 0
    # implicit mode keeps the graph of exactly one call of f (with z requiring grad); unrolled mode keeps one such graph
    # per step after the first (whose input, the detached fixed point, needs no gradient), growing linearly with k
    one_call, _ = saved_tensor_bytes(lambda: layer(torch.zeros(4, 64, dtype=F64, requires_grad=True), x))
    assert saved[10] == one_call
    assert saved["unrolled 5"] - saved["unrolled 1"] == 4 * one_call
    assert saved["unrolled 50"] - saved["unrolled 5"] == 45 * one_call


@CUDA
def test_forward_peak_cuda_memory_does_not_grow_with_iterations():
    torch.manual_seed(0)
    layer, x = SlowLayer(n=256).cuda(), torch.randn(16, 256, dtype=F64, device="cuda")
    peaks = {}
    for max_iter in (10, 10, 200):  # the first run warms up the allocator
        deq = DEQ(layer, solver="picard", tol=1e-12, max_iter=max_iter)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            z, _ = deq(x)
        torch.cuda.synchronize()
        peaks[max_iter] = torch.cuda.max_memory_allocated() - base
        del z
    print(f"\npeak CUDA memory of the forward call: {peaks}")
    assert peaks[10] == peaks[200]


# ---------------------------------------------------------------- devices


@CUDA
@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_solvers_and_layer_run_on_cuda(solver):
    f, z_star, _ = linear_contraction(n=16, dtype=torch.float32, device="cuda")
    z, info = fixed_point_solve(f, torch.zeros(3, 16, device="cuda"), solver=solver, tol=1e-6)
    assert z.device.type == "cuda" and z.dtype == torch.float32 and info.converged
    assert rel_err(z.double().cpu(), z_star) < 1e-4

    layer = TanhLayer().cuda()
    x = torch.randn(2, 5, dtype=F64, device="cuda", requires_grad=True)
    z, info = DEQ(layer, solver=solver, tol=1e-10)(x, z0=torch.zeros(2, 8, dtype=F64, device="cuda"))
    z.sum().backward()
    assert info.converged and x.grad.device.type == "cuda" and layer.weight.grad.device.type == "cuda"


def test_solver_info_dataclass_is_frozen():
    info = SolverInfo("picard", 1, True, 0.0, 0.0, [0.0], [0.0], 1e-3, 10, "converged")
    with pytest.raises(AttributeError):
        info.nstep = 2


def test_gmres_solves_a_slowly_contracting_affine_map_in_fewer_evaluations_than_anderson():
    """An affine map whose Jacobian has 200 eigenvalues between 0.9 and 0.999 (as the MM map's, near 1): GMRES
    reaches the exact fixed point (linear solve) in 87 evaluations of f, Anderson in 229 (when written)."""
    from monai_ext.deq.solvers import anderson_solve, gmres_solve

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=gen))
    m = q @ torch.diag(torch.linspace(0.9, 0.999, 200, dtype=torch.float64)) @ q.T
    b = torch.randn(2, 200, dtype=torch.float64, generator=gen)
    exact = torch.linalg.solve(torch.eye(200, dtype=torch.float64) - m, b.T).T
    z, info = gmres_solve(lambda v: v @ m.T + b, torch.zeros(2, 200, dtype=torch.float64), tol=1e-10, max_iter=300)
    assert info.converged and float((z - exact).norm() / exact.norm()) < 1e-7
    _, slow = anderson_solve(lambda v: v @ m.T + b, torch.zeros(2, 200, dtype=torch.float64), tol=1e-10, max_iter=300, warn=False)
    assert info.nstep < 0.5 * slow.nstep, (info.nstep, slow.nstep)

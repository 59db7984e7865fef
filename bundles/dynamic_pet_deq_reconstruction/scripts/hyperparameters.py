"""Experiment runners of the ``dynamic_pet_deq_reconstruction`` bundle: learning, comparison and dose sweep.

Each runner simulates its data with :func:`monai_ext.dynamic_pet.noise_realisations.simulate_realisations`, works on any
device, writes its results (JSON, PNG) atomically into ``output_dir`` and returns them as a dict:

- :func:`learn_case`: DEQ learning of ``eta`` and ``lambda_1..T`` for one phantom, slice and dose (the same steps as
  ``train.json``'s engine; used by the comparison and the dose sweep).
- :func:`compare_estimators`: DEQ (``1 + T`` parameters) against grid search and TPE (scalar ``lambda``) at the same
  wall-clock budget, validation MSEs, learned weights against frame SNR, Anderson against plain MM iteration, and a
  figure of reference and absolute errors (``evaluate.json``, the paper's Table I and Fig. 1).
- :func:`dose_sweep`: learning at several doses, the four parametric fits against ``D`` and the dose model file
  (``dose_sweep.json``, the paper's Fig. 2).
- :func:`learning_groups`, :func:`group_weights`, :func:`write_learning`: ``train.json``'s learning by MONAI engines
  (``monai_ext.dynamic_pet.learning_engine``), of one simulated case or of a user's exam groups (``dataset_dir``),
  and the dose model refitted from the learned weights.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monai_ext.distributed import barrier, is_main_process, rank_and_world_size, shard, weighted_mean
from monai_ext.io import atomic_path, save_figure, save_json
from monai_ext.pet import DynamicPETSimulator
from monai_ext.dynamic_pet.dose_model import DoseModel
from monai_ext.dynamic_pet.hyperparameter_learning import (
    FixedPointProblem,
    RegularisationWeights,
    SearchResult,
    best_trial_index,
    grid_search,
    learn_hyperparameters_deq,
    tpe_search,
)
from monai_ext.dynamic_pet.noise_realisations import DEFAULT_SLICE_FRACTION, NoiseRealisations, exam_realisations, simulate_realisations
from monai_ext.dynamic_pet.regularised_mm import mm_reconstruct

__all__ = [
    "SolverSettings",
    "LearningSettings",
    "simulation_setting",
    "frame_snr",
    "learn_case",
    "compare_estimators",
    "compare_cases",
    "summarise_comparison",
    "rescore_comparison",
    "compare_solvers",
    "dose_sweep",
    "LearningGroup",
    "learning_groups",
    "group_weights",
    "write_learning",
    "table_i",
    "exam_groups",
    "comparison_table",
    "lambdas_table",
    "solver_table",
    "save_error_maps",
    "save_dose_fits",
    "save_lambda_profiles",
]

logger = logging.getLogger("dynamic_pet_deq_reconstruction")


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """Settings of the lower-level problem and its fixed-point solves.

    Args:
        eps: TV smoothing (0.1 in the paper).
        solver: forward solver (``"anderson"``).
        tol: forward relative-residual tolerance.
        max_iter: forward budget (500 in the paper).
        anderson_memory: Anderson's ``m``.
        anderson_beta: Anderson's mixing ``beta`` (0.5: see ``monai_ext.dynamic_pet.regularised_mm.ANDERSON_OPTIONS``).
        backward_solver: implicit-gradient solver: ``"gmres"`` (the equation is linear, and the MM map's Jacobian
            has eigenvalues near 1, where Anderson stalls).
        gmres_restart: Krylov dimension of the GMRES backward solve before a restart.
        backward_tol: implicit-gradient solve tolerance.
        backward_max_iter: implicit-gradient solve budget (vector-Jacobian products).
        dtype: ``"float32"`` or ``"float64"``.

    The defaults give hypergradients within 2.6 % of the true ones per component on the 16 x 16, 3-frame test
    problem of ``tests/test_dynamic_pet_bundle.py`` (finite differences of fixed points converged to 1e-11); the
    settings used before (float32, forward 1e-5, Anderson backward 5e-3 in 50 steps) were 10 to 27 % off.
        validation_restarts: fresh Anderson solves from the last iterate while a validation solve (uniform start)
            misses ``tol`` (see ``FixedPointProblem.reconstruct``).
    """

    eps: float = 0.1
    solver: str = "anderson"
    tol: float = 1e-6
    max_iter: int = 500
    anderson_memory: int = 5
    anderson_beta: float = 0.5
    backward_solver: str = "gmres"
    gmres_restart: int = 60
    backward_tol: float = 1e-5
    backward_max_iter: int = 150
    dtype: str = "float64"
    validation_restarts: int = 5

    def solver_kwargs(self) -> dict:
        """Options of the fixed-point solver."""
        return {"m": int(self.anderson_memory), "beta": float(self.anderson_beta)} if self.solver == "anderson" else {}

    def problem(self, data: NoiseRealisations, device) -> FixedPointProblem:
        """A fresh :class:`FixedPointProblem` (empty warm-start cache) for ``data``."""
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}.")
        kwargs = self.solver_kwargs()
        return FixedPointProblem(
            data, eps=self.eps, solver=self.solver, tol=self.tol, max_iter=self.max_iter, solver_kwargs=kwargs,
            backward_tol=self.backward_tol, backward_max_iter=self.backward_max_iter, backward_solver=self.backward_solver,
            backward_solver_kwargs={"restart": int(self.gmres_restart)} if self.backward_solver == "gmres" else None,
            device=device, dtype=getattr(torch, self.dtype),
        )


@dataclasses.dataclass(frozen=True)
class LearningSettings:
    """Data split and optimiser of the DEQ learning, and the box of the searches.

    Args:
        n_realisations: noise realisations (96 in the paper).
        n_train: training realisations (80 in the paper); the rest validate.
        epochs: Adam epochs (50 in the paper).
        batch_size: realisations per step (16 in the paper).
        lr: initial learning rate on the log-weights.
        lr_final: learning rate of the last epoch (exponential decay).
        eta_init: initial ``eta`` (the geometric centre of ``eta_range``).
        lambda_init: initial ``lambda_t`` (the geometric centre of ``lambda_range``).
        eta_range: search box of ``eta`` for grid search and TPE (two decades around ``eta_init``).
        lambda_range: search box of ``lambda`` (two decades around ``lambda_init``).
        search_realisations: training realisations scoring each grid/TPE trial (the first ones; ``None``: all).
            Default: as many as a DEQ mini-batch, which buys the searches several times more trials.
        tpe_startup_trials: random trials before TPE models the objective.
        slice_fraction: share of ``D`` in the simulated slice.
        seed: seed of the mini-batch order and of TPE.
        noise_seed: first noise seed of the realisations.
    """

    n_realisations: int = 24
    n_train: int = 20
    epochs: int = 10
    batch_size: int = 5
    lr: float = 0.15
    lr_final: float = 0.02
    eta_init: float = 1.0
    lambda_init: float = 0.1
    eta_range: tuple[float, float] = (0.1, 10.0)
    lambda_range: tuple[float, float] = (0.01, 1.0)
    search_realisations: int | None = 5
    tpe_startup_trials: int = 5
    slice_fraction: float = DEFAULT_SLICE_FRACTION
    seed: int = 0
    noise_seed: int = 1000


def _settings(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    raise TypeError(f"expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}.")


def simulation_setting(simulator: DynamicPETSimulator, solver: SolverSettings, slice_fraction: float) -> dict:
    """What learned weights depend on: grid, scanner sampling, PSF, frame schedule, background, ``eps``."""
    geometry = simulator.geometry
    return {
        "image_shape": list(simulator.image_shape),
        "pixel_size_mm": list(geometry.pixel_size),
        "scanner": simulator.scanner.name,
        "sinogram_shape": list(geometry.sinogram_shape),
        "psf_fwhm_mm": simulator.psf_fwhm,
        "frame_durations_s": list(simulator.schedule.durations),
        "background_fraction": simulator.background_fraction,
        "slice_fraction": slice_fraction,
        "eps": solver.eps,
    }


def frame_snr(data: NoiseRealisations) -> list[float]:
    """Count signal-to-noise ratio of each frame, ``trues_t / sqrt(trues_t + background_t)`` (frame totals)."""
    trues = data.exam.trues.flatten(1).sum(-1)
    total = data.exam.expected_counts.flatten(1).sum(-1)
    return [float(v) for v in trues / total.sqrt()]


def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _simulate(simulator, dose, subject_seed, learning: LearningSettings) -> NoiseRealisations:
    return simulate_realisations(
        simulator, dose, learning.n_realisations, subject_seed=subject_seed, slice_fraction=learning.slice_fraction,
        noise_seed=learning.noise_seed,
    )


def _validation_mse(problem: FixedPointProblem, val_idx, eta, lambdas, batch_size: int, restarts: int) -> float:
    """Validation MSE from the uniform start; under ``torch.distributed`` each rank solves its share of ``val_idx``
    and the ranks' means are averaged with the share sizes as weights (every rank gets the same value)."""
    share = shard(val_idx)
    local = problem.mse(share, eta, lambdas, batch_size, warm_start=False, restarts=restarts) if share else 0.0
    return weighted_mean(local, len(share))


def _validate(problem: FixedPointProblem, val_idx, result: SearchResult, batch_size: int, restarts: int) -> SearchResult:
    """Validation MSE from the uniform start (the same for every method)."""
    result.val_mse = _validation_mse(problem, val_idx, result.eta, result.lambdas, batch_size, restarts)
    return result


def learn_case(
    simulator: DynamicPETSimulator,
    dose: float,
    subject_seed: int = 0,
    *,
    learning: LearningSettings | dict | None = None,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | None = None,
    data: NoiseRealisations | None = None,
    per_frame: bool = True,
) -> dict:
    """DEQ learning of ``eta`` and ``lambda_1..T`` for one phantom (``subject_seed``), slice and dose ``D``.

    Writes ``learned_hyperparameters.json`` into ``output_dir`` (when given): the weights, the training and
    validation MSEs, the MSE of the initial weights, the frame SNRs, the time and the per-step history.

    Under ``torch.distributed`` the learning is data parallel over the realisations of each mini-batch (see
    :func:`~monai_ext.dynamic_pet.hyperparameter_learning.learn_hyperparameters_deq`) and the validation over the validation
    realisations; every rank returns the same weights and MSEs, rank 0 alone logs and writes the file (``seconds``
    is rank 0's compute time), and every rank returns once it is written.

    Args:
        simulator: the dynamic PET simulator (grid, scanner, schedule).
        dose: ``D``, counts of the exam.
        subject_seed: the phantom.
        learning: :class:`LearningSettings` or a dict of its fields.
        solver: :class:`SolverSettings` or a dict of its fields.
        device: where to learn.
        output_dir: where to write the results.
        data: realisations to use instead of simulating them.
        per_frame: learn one ``lambda_t`` per frame (``1 + T`` weights); ``False``: one ``lambda`` for all frames
            (2 weights, the paper's "DEQ, 2 parameters" row).

    Example:
        >>> sim = DynamicPETSimulator(image_shape=(64, 64), view_mashing=4)
        >>> out = learn_case(sim, 300e6, subject_seed=1, output_dir="outputs/train")
    """
    learning, solver = _settings(LearningSettings, learning), _settings(SolverSettings, solver)
    data = data if data is not None else _simulate(simulator, dose, subject_seed, learning)
    train_idx, val_idx = data.split(learning.n_train)
    problem = solver.problem(data, device)
    initial = _validation_mse(problem, val_idx, learning.eta_init, learning.lambda_init, learning.batch_size,
                              solver.validation_restarts)
    weights = RegularisationWeights(data.n_frames, learning.eta_init, learning.lambda_init, per_frame=per_frame)
    result = learn_hyperparameters_deq(
        problem, train_idx, weights, epochs=learning.epochs, batch_size=learning.batch_size, lr=learning.lr,
        lr_final=learning.lr_final, seed=learning.seed, log=logger.info,
    )
    _validate(problem, val_idx, result, learning.batch_size, solver.validation_restarts)
    snr = frame_snr(data)
    out = {
        "subject_seed": int(subject_seed),
        "dose": float(dose),
        "setting": simulation_setting(simulator, solver, learning.slice_fraction),
        "learning": dataclasses.asdict(learning),
        "solver": dataclasses.asdict(solver),
        "device": str(device),
        "world_size": rank_and_world_size()[1],
        "n_parameters": weights.n_parameters,
        "eta": result.eta,
        "lambdas": result.lambdas,
        "train_mse": result.train_mse,
        "val_mse": result.val_mse,
        "initial_val_mse": initial,
        "seconds": result.seconds,
        "wall_seconds": result.wall_seconds,
        "clock": problem.clock().kind,
        "frame_snr": snr,
        "spearman_lambda_snr": _spearman(result.lambdas, snr),
        "history": result.history,
    }
    if is_main_process():
        logger.info(
            f"learned D={dose:.3g}, subject {subject_seed}: val MSE {initial:.5f} -> {result.val_mse:.5f}, eta {result.eta:.4g}, "
            f"{result.seconds:.1f} s"
        )
        if output_dir is not None:
            save_json(out, Path(output_dir) / "learned_hyperparameters.json")
    barrier()
    return out


def compare_solvers(data: NoiseRealisations, eta: float, lambdas, idx: Sequence[int], solver: SolverSettings, device="cpu") -> dict:
    """MM iterations to reach ``solver.tol`` from the uniform start: Anderson against plain MM (Picard) iteration."""
    problem = solver.problem(data, device)
    counts = problem.counts[list(idx)]
    out = {}
    for name, kwargs in (("anderson", {"m": solver.anderson_memory, "beta": solver.anderson_beta}), ("picard", {})):
        start = time.perf_counter()
        _, info = mm_reconstruct(counts, problem.model, eta, torch.as_tensor(lambdas, dtype=problem.dtype), solver.eps, solver=name,
                                 tol=solver.tol, max_iter=5000, solver_kwargs=kwargs)
        out[name] = {"iterations": info.nstep, "converged": info.converged, "rel_residual": info.rel_residual,
                     "seconds": time.perf_counter() - start}
    out["ratio"] = out["picard"]["iterations"] / max(out["anderson"]["iterations"], 1)
    out["tol"] = solver.tol
    return out


def compare_estimators(
    simulator: DynamicPETSimulator,
    dose: float,
    subject_seed: int = 0,
    *,
    learning: LearningSettings | dict | None = None,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | None = None,
    name: str | None = None,
    figure_frames: Sequence[int] = (1, 19),
) -> dict:
    """DEQ (``1 + T`` weights) against the DEQ with 2 weights (``eta`` and one ``lambda``, the same learning), grid
    search and TPE (``eta`` and one ``lambda``) at equal compute time.

    The DEQ learns first; its training time (``ComputeClock``: CPU time of the process on CPU, synchronised
    wall-clock time on CUDA) is the budget of each search. Every method starts from an empty
    warm-start cache; validation MSEs use the same uniform start and tolerance. Also reported: the learned
    ``lambda_t`` against the frame SNR, and MM iterations of Anderson against plain iteration at the learned weights.
    Writes ``<name>.json`` and ``<name>_errors.png`` (reference and absolute errors of the first validation
    realisation at ``figure_frames``) into ``output_dir``.

    Arguments as :func:`learn_case`, plus ``name`` (default ``subject<seed>_dose<D in M>``) and ``figure_frames``.
    """
    learning, solver = _settings(LearningSettings, learning), _settings(SolverSettings, solver)
    name = name or f"subject{subject_seed}_dose{dose / 1e6:g}M"
    data = _simulate(simulator, dose, subject_seed, learning)
    train_idx, val_idx = data.split(learning.n_train)
    deq = learn_case(simulator, dose, subject_seed, learning=learning, solver=solver, device=device, data=data)
    budget = deq["seconds"]
    deq_2 = learn_case(simulator, dose, subject_seed, learning=learning, solver=solver, device=device, data=data, per_frame=False)
    rows = [{"method": method, "n_parameters": run["n_parameters"], "val_mse": run["val_mse"], "train_mse": run["train_mse"],
             "seconds": run["seconds"], "wall_seconds": run["wall_seconds"], "n_evaluations": len(run["history"]),
             "eta": run["eta"], "lambdas": run["lambdas"]} for method, run in (("deq", deq), ("deq_2", deq_2))]
    box = {"eta_range": learning.eta_range, "lambda_range": learning.lambda_range, "time_budget_s": budget,
           "batch_size": learning.batch_size, "trial_realisations": learning.search_realisations, "log": logger.info}
    for search, kwargs in ((grid_search, {"seed": learning.seed}), (tpe_search, {"seed": learning.seed, "n_startup_trials": learning.tpe_startup_trials})):
        problem = solver.problem(data, device)
        result = _validate(problem, val_idx, search(problem, train_idx, **box, **kwargs), learning.batch_size,
                           solver.validation_restarts)
        rows.append({"method": result.method, "n_parameters": 2, "val_mse": result.val_mse, "train_mse": result.train_mse,
                     "seconds": result.seconds, "wall_seconds": result.wall_seconds, "n_evaluations": result.n_evaluations,
                     "eta": result.eta, "lambdas": result.lambdas, "best_trial_index": best_trial_index(result),
                     "trials": result.history})
    # reconstructions of one validation realisation for the figure, and the solver comparison at the DEQ weights
    problem = solver.problem(data, device)
    recons = {}
    with torch.no_grad():
        for row in rows:
            recons[row["method"]] = problem.reconstruct(val_idx[:1], row["eta"], row["lambdas"], warm_start=False,
                                                        restarts=solver.validation_restarts)[0].cpu()
    solvers = compare_solvers(data, deq["eta"], deq["lambdas"], val_idx[:1], solver, device)
    out = {
        "name": name,
        "subject_seed": int(subject_seed),
        "dose": float(dose),
        "budget_s": budget,
        "clock": deq["clock"],
        "rows": rows,
        "initial_val_mse": deq["initial_val_mse"],
        "frame_snr": deq["frame_snr"],
        "spearman_lambda_snr": deq["spearman_lambda_snr"],
        "solver_iterations": solvers,
        "setting": deq["setting"],
        "learning": deq["learning"],
        "solver": deq["solver"],
        "deq_history": deq["history"],
    }
    logger.info(
        f"{name}: val MSE " + ", ".join(f"{r['method']} {r['val_mse']:.5f} ({r['seconds']:.0f} s)" for r in rows)
        + f"; Anderson {solvers['anderson']['iterations']} vs plain {solvers['picard']['iterations']} MM iterations"
    )
    if output_dir is not None:
        save_json(out, Path(output_dir) / f"{name}.json")
        save_error_maps(data.reference, recons, figure_frames, Path(output_dir) / f"{name}_errors.png",
                        title=f"subject {subject_seed}, D = {dose / 1e6:g} M counts, validation realisation")
    return out


def rescore_comparison(
    simulator: DynamicPETSimulator,
    result: dict,
    *,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | None = None,
    figure_frames: Sequence[int] = (1, 19),
) -> dict:
    """Validation MSEs (and the error figure) of a saved :func:`compare_estimators` result again, with ``solver``
    (default: the saved settings with :class:`SolverSettings`' default ``validation_restarts``), on the same
    simulated realisations; the learned weights are kept. Each row's previous score is kept as
    ``val_mse_previous``. Writes ``<name>.json`` and ``<name>_errors.png`` into ``output_dir``.

    For results computed before validation solves restarted a stalled Anderson solve: such a stall is scored as the
    MSE of an iterate far from the fixed point.

    Raises:
        ValueError: ``simulator`` (or ``solver``'s ``eps``) is not the setting ``result`` was computed in.
    """
    learning = _settings(LearningSettings, result["learning"])
    solver = _settings(SolverSettings, solver if solver is not None else
                       {k: v for k, v in result["solver"].items() if k != "validation_restarts"})
    setting = simulation_setting(simulator, solver, learning.slice_fraction)
    if setting != result["setting"]:
        raise ValueError(f"the result was computed in the setting {result['setting']}, not in {setting}.")
    data = _simulate(simulator, result["dose"], result["subject_seed"], learning)
    _, val_idx = data.split(learning.n_train)
    out = {**result, "rows": [dict(row) for row in result["rows"]], "solver": dataclasses.asdict(solver)}
    problem = solver.problem(data, device)
    recons, converged = {}, {}
    with torch.no_grad():
        out["initial_val_mse_previous"] = result["initial_val_mse"]
        out["initial_val_mse"] = problem.mse(val_idx, learning.eta_init, learning.lambda_init, learning.batch_size,
                                             warm_start=False, restarts=solver.validation_restarts)
        for row in out["rows"]:
            row["val_mse_previous"] = row["val_mse"]
            row["val_mse"] = problem.mse(val_idx, row["eta"], row["lambdas"], learning.batch_size, warm_start=False,
                                         restarts=solver.validation_restarts)
            converged[row["method"]] = {"converged": bool(problem.last_info.converged),
                                        "rel_residual": float(problem.last_info.rel_residual),
                                        "mm_steps": int(problem.forward_steps[-1])}
            recons[row["method"]] = problem.reconstruct(val_idx[:1], row["eta"], row["lambdas"], warm_start=False,
                                                        restarts=solver.validation_restarts)[0].cpu()
    out["validation_solves"] = converged
    logger.info(f"{result['name']} rescored: " + ", ".join(
        f"{r['method']} {r['val_mse_previous']:.5f} -> {r['val_mse']:.5f}" for r in out["rows"]))
    if output_dir is not None:
        save_json(out, Path(output_dir) / f"{result['name']}.json")
        save_error_maps(data.reference, recons, figure_frames, Path(output_dir) / f"{result['name']}_errors.png",
                        title=f"subject {result['subject_seed']}, D = {result['dose'] / 1e6:g} M counts, validation realisation")
    return out


def compare_cases(
    simulator: DynamicPETSimulator,
    cases: Sequence[dict],
    *,
    learning: LearningSettings | dict | None = None,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | None = None,
) -> dict:
    """:func:`compare_estimators` on each case (``{"subject_seed": int, "dose": float}``), then ``comparison.json`` and
    ``comparison.md`` (the MSE table with times, the learned ``lambda_t`` against the frame SNR, and the MM
    iterations of Anderson against plain iteration) in ``output_dir``.

    Raises:
        ValueError: an empty case list or a case without ``subject_seed`` / ``dose``.
    """
    if not cases:
        raise ValueError("cases must list at least one {'subject_seed': ..., 'dose': ...}.")
    for case in cases:
        if not {"subject_seed", "dose"} <= set(case):
            raise ValueError(f"each case needs 'subject_seed' and 'dose', got {case}.")
    results = [
        compare_estimators(simulator, float(c["dose"]), int(c["subject_seed"]), learning=learning, solver=solver, device=device,
                           output_dir=output_dir)
        for c in cases
    ]
    return summarise_comparison(results, output_dir)


def summarise_comparison(results: Sequence[dict], output_dir: str | None = None) -> dict:
    """The tables of :func:`compare_cases` from results of :func:`compare_estimators` (e.g. the ``<name>.json`` of
    cases run as separate processes): ``comparison.json``, ``comparison.md`` and ``lambda_profiles.png`` in
    ``output_dir``."""
    results = list(results)
    summary = {"cases": results, "table": comparison_table(results), "lambdas_table": lambdas_table(results),
               "solver_table": solver_table(results)}
    if output_dir is not None:
        save_json(summary, Path(output_dir) / "comparison.json")
        text = "\n\n".join([summary["table"], summary["lambdas_table"], summary["solver_table"]]) + "\n"
        with atomic_path(Path(output_dir) / "comparison.md", suffix=".md") as tmp:
            tmp.write_text(text)
        save_lambda_profiles(results, Path(output_dir) / "lambda_profiles.png")
    logger.info("\n" + summary["table"])
    return summary


def lambdas_table(results: Sequence[dict]) -> str:
    """Markdown table of the DEQ's ``lambda_t`` per case, with the frame SNR and their Spearman correlation."""
    head = "| frame | " + " | ".join(f"SNR / lambda_t (s{r['subject_seed']}, {r['dose'] / 1e6:g} M)" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for t in range(len(results[0]["frame_snr"])):
        cells = [f"{r['frame_snr'][t]:.0f} / {r['rows'][0]['lambdas'][t]:.4f}" for r in results]
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    lines.append("| eta | " + " | ".join(f"{r['rows'][0]['eta']:.4f}" for r in results) + " |")
    lines.append("| Spearman(lambda_t, SNR_t) | " + " | ".join(f"{r['spearman_lambda_snr']:+.2f}" for r in results) + " |")
    return "\n".join(lines)


def solver_table(results: Sequence[dict]) -> str:
    """Markdown table of MM iterations to the tolerance: Anderson against plain iteration, at the learned weights."""
    lines = ["| case | tolerance | Anderson | plain MM | ratio |", "|---|---|---|---|---|"]
    for r in results:
        it = r["solver_iterations"]
        lines.append(f"| subject {r['subject_seed']}, D = {r['dose'] / 1e6:g} M | {it['tol']:.0e} | {it['anderson']['iterations']} "
                     f"| {it['picard']['iterations']} | {it['ratio']:.1f} |")
    return "\n".join(lines)


def comparison_table(results: Sequence[dict]) -> str:
    """Markdown table of validation MSEs (compute time, trials or steps) of each method per case, like Table I."""
    methods = [r["method"] for r in results[0]["rows"]]
    labels = {"deq": "DEQ", "deq_2": "DEQ, 2 parameters", "grid_search": "Grid search", "tpe": "TPE"}
    head = "| method | learnt params | " + " | ".join(f"subject {r['subject_seed']}, D = {r['dose'] / 1e6:g} M" for r in results) + " |"
    lines = [head, "|---|---|" + "---|" * len(results)]
    for i, method in enumerate(methods):
        cells = [f"{r['rows'][i]['val_mse']:.4f} ({r['rows'][i]['seconds']:.0f} s, {r['rows'][i]['n_evaluations']})" for r in results]
        lines.append(f"| {labels.get(method, method)} | {results[0]['rows'][i]['n_parameters']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_lambda_profiles(results: Sequence[dict], path: str | Path) -> Path:
    """The learned ``lambda_t`` of each case against the frame index, with the frame SNR on a second axis, and the
    scalar ``lambda`` of grid search and TPE for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    right = ax.twinx()
    for r in results:
        frames = np.arange(1, len(r["frame_snr"]) + 1)
        (line,) = ax.plot(frames, r["rows"][0]["lambdas"], "o-", label=f"DEQ, subject {r['subject_seed']}, D = {r['dose'] / 1e6:g} M")
        styles = {"deq_2": "-.", "grid_search": ":", "tpe": "--"}
        for row in r["rows"][1:]:
            ax.axhline(row["lambdas"][0], color=line.get_color(), linestyle=styles.get(row["method"], ":"), linewidth=0.8)
        right.plot(frames, r["frame_snr"], color=line.get_color(), alpha=0.3, linewidth=3)
    ax.set_yscale("log")
    ax.set_xlabel("frame")
    ax.set_ylabel(r"learned $\lambda_t$ (dash-dot: DEQ-2, dotted: grid, dashed: TPE)")
    right.set_ylabel("frame count SNR (thick, light)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


def save_error_maps(reference: torch.Tensor, recons: dict, frames: Sequence[int], path: str | Path, title: str = "") -> Path:
    """Figure like Chazottes et al.'s Fig. 1: per frame, the reference and the absolute error of each method, errors on
    one colour scale per frame (normalised to the largest error of that frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"deq": "DEQ (21 params)", "deq_2": "DEQ (2)", "grid_search": "grid search (2)", "tpe": "TPE (2)"}
    frames = [int(f) for f in frames]
    fig, axes = plt.subplots(len(frames), 1 + len(recons), figsize=(3.0 * (1 + len(recons)), 3.0 * len(frames)), squeeze=False)
    for row, t in enumerate(frames):
        ref = reference[t].cpu().numpy()
        errors = {k: np.abs(v[t].numpy() - ref) for k, v in recons.items()}
        vmax = max(float(e.max()) for e in errors.values())
        shown = axes[row, 0].imshow(ref, cmap="gray")
        axes[row, 0].set_title(f"reference, frame {t + 1}", fontsize=9)
        fig.colorbar(shown, ax=axes[row, 0], fraction=0.046, pad=0.02)
        for col, (k, e) in enumerate(errors.items(), start=1):
            shown = axes[row, col].imshow(e / vmax, cmap="inferno", vmin=0, vmax=1)
            axes[row, col].set_title(f"|error| {labels.get(k, k)}\nMSE {float((e ** 2).mean()):.3f}", fontsize=9)
            fig.colorbar(shown, ax=axes[row, col], fraction=0.046, pad=0.02)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


def dose_sweep(
    simulator: DynamicPETSimulator,
    doses: Sequence[float] = (150e6, 250e6, 300e6, 400e6, 500e6, 750e6),
    subject_seed: int = 0,
    *,
    learning: LearningSettings | dict | None = None,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | None = None,
    dose_model_file: str | None = None,
) -> dict:
    """Learn the weights at each dose, fit the four parametric models against ``D``, keep the best per weight.

    Writes ``dose_sweep.json`` (learned weights per dose and every fit with its R^2) and ``eta_dose_fits.png`` /
    ``lambda_dose_fits.png`` into ``output_dir``, and the :class:`~monai_ext.dynamic_pet.dose_model.DoseModel` to
    ``dose_model_file``.

    Arguments as :func:`learn_case`, plus the ``doses`` and ``dose_model_file``.
    """
    learning, solver = _settings(LearningSettings, learning), _settings(SolverSettings, solver)
    runs = []
    for dose in doses:
        run = learn_case(simulator, dose, subject_seed, learning=learning, solver=solver, device=device)
        run.pop("history")
        runs.append(run)
    setting = {**simulation_setting(simulator, solver, learning.slice_fraction), "subject_seed": int(subject_seed)}
    model = DoseModel.fit([r["dose"] for r in runs], [r["eta"] for r in runs], [r["lambdas"] for r in runs], setting=setting)
    out = {"doses": [float(d) for d in doses], "runs": runs, "dose_model": model.as_dict()}
    fits = model.learned["fits"]["eta"]
    logger.info("eta_D fits: " + ", ".join(f"{k} R2={v['r2']:.4f}" for k, v in fits.items()) + f"; kept {model.eta.model}")
    if output_dir is not None:
        save_json(out, Path(output_dir) / "dose_sweep.json")
        save_dose_fits(model, Path(output_dir))
    if dose_model_file is not None:
        model.save(dose_model_file)
    return out


def _cross_subject_error(models: Sequence[DoseModel]) -> float:
    """Mean relative error of predicting each subject's learned weights (``eta`` and every ``lambda_t`` at each of its
    doses) with every other subject's dose model."""
    errors = []
    for i, model in enumerate(models):
        for j, other in enumerate(models):
            if i == j:
                continue
            for dose, eta, lambdas in zip(other.learned["doses"], other.learned["eta"], other.learned["lambdas"]):
                predicted_eta, predicted_lambdas = model.hyperparameters(dose)
                truth = np.asarray([eta, *lambdas], dtype=float)
                guess = np.asarray([float(predicted_eta), *np.asarray(predicted_lambdas, dtype=float)], dtype=float)
                errors.extend(np.abs(guess - truth) / np.abs(truth))
    return float(np.mean(errors)) if errors else float("nan")


def table_i(comparisons: Sequence[dict], dose_sweeps: Sequence[dict], hypergradient_rel_error: float, path: str | Path | None = None) -> dict:
    """The paper's Table I and the dose model's robustness across subjects as one JSON (``docs/results/table_i.json``).

    Args:
        comparisons: results of :func:`compare_estimators` (one per subject and dose).
        dose_sweeps: results of :func:`dose_sweep` (one per subject; each holds its ``dose_model``).
        hypergradient_rel_error: the worst component's relative error of the learning's hypergradient (the test
            problem's, ``monai_ext.dynamic_pet.hyperparameter_learning.hypergradient_error``).
        path: where to write it.

    Raises:
        ValueError: no comparison, or comparisons of different learning settings.
    """
    if not comparisons:
        raise ValueError("table_i needs at least one comparison.")
    learning = comparisons[0]["learning"]
    if any(c["learning"] != learning for c in comparisons):
        raise ValueError("the comparisons were run with different learning settings; one table needs one setting.")
    cases = []
    for c in comparisons:
        rows = {r["method"]: r for r in c["rows"]}
        names = {"deq": "deq_21", "deq_2": "deq_2", "grid_search": "grid_search", "tpe": "tpe"}
        cases.append({
            "subject": int(c["subject_seed"]),
            "dose": float(c["dose"]),
            "mse": {names[m]: float(r["val_mse"]) for m, r in rows.items() if m in names},
            "cpu_seconds": {names[m]: float(r["seconds"]) for m, r in rows.items() if m in names},
            "grid_best_trial_index": int(rows["grid_search"]["best_trial_index"]) if "best_trial_index" in rows.get("grid_search", {}) else None,
        })
    models = [DoseModel.from_dict(sweep["dose_model"]) for sweep in dose_sweeps]
    subjects = []
    for sweep, model in zip(dose_sweeps, models):
        fits = model.learned["fits"]["eta"]
        subjects.append({"subject": int(sweep["runs"][0]["subject_seed"]), "doses": list(model.learned["doses"]),
                         "r2_eta": {name: float(fit["r2"]) for name, fit in fits.items()}, "eta_model": model.eta.model,
                         "eta_coefficients": list(model.eta.coefficients)})
    out = {
        "epochs": int(learning["epochs"]),
        "realisations": {"train": int(learning["n_train"]), "validation": int(learning["n_realisations"]) - int(learning["n_train"])},
        "image": list(comparisons[0]["setting"]["image_shape"]),
        "hypergradient_rel_error": float(hypergradient_rel_error),
        "cases": cases,
        "dose_model": {"subjects": subjects, "cross_subject_error": _cross_subject_error(models) if len(models) > 1 else None},
    }
    if path is not None:
        save_json(out, path)
    return out


def _is_exam(folder: Path) -> bool:
    return (folder / "sinograms.json").is_file()


def exam_groups(dataset_dir: str) -> dict[str, list[Path]]:
    """The groups of exam folders under ``dataset_dir``: each sub-folder holding exam folders is one group (the
    realisations of one subject, slice and dose); a ``dataset_dir`` that holds exam folders itself is one group.

    Raises:
        FileNotFoundError: ``dataset_dir`` does not exist, or holds no exam (a folder with ``sinograms.json``).
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {str(root)!r} is not a directory.")
    exams = sorted(p for p in root.iterdir() if p.is_dir() and _is_exam(p))
    if exams:
        return {root.name: exams}
    groups = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        members = sorted(p for p in folder.iterdir() if p.is_dir() and _is_exam(p))
        if members:
            groups[folder.name] = members
    if not groups:
        raise FileNotFoundError(f"no exam in dataset_dir {root}: expected group folders of exam folders (each with sinograms.json, "
                                "sinograms.npz and the reference activity.nii.gz, as monai_ext.pet.save_exam writes them).")
    return groups


def _check_grid(data: NoiseRealisations, simulator: DynamicPETSimulator, group: str) -> None:
    geometry = data.exam.geometry
    if tuple(geometry.image_shape) != tuple(simulator.image_shape) or tuple(geometry.sinogram_shape) != tuple(simulator.geometry.sinogram_shape):
        raise ValueError(f"group {group}: the exams have image shape {tuple(geometry.image_shape)} and sinogram shape "
                         f"{tuple(geometry.sinogram_shape)}, the bundle is set up for {tuple(simulator.image_shape)} and "
                         f"{tuple(simulator.geometry.sinogram_shape)} (image_shape, view_mashing in the config).")


@dataclasses.dataclass
class LearningGroup:
    """One learning problem of ``train.json``: the realisations of one subject, slice and dose, their split, their
    settings and their :class:`FixedPointProblem`.

    Attributes:
        name: the group's name (its folder, or ``subject<seed>_dose<D in M>`` for simulated data).
        dose: ``D`` (counts of the whole exam).
        subject_seed: the simulated phantom (``-1`` for a user's exams).
        data: the realisations.
        learning: the group's :class:`LearningSettings` (split and batch size).
        problem: its fixed-point problem.
        exams: the exam folders of a user's group (empty for simulated data).
    """

    name: str
    dose: float
    subject_seed: int
    data: NoiseRealisations
    learning: LearningSettings
    problem: FixedPointProblem
    exams: list = dataclasses.field(default_factory=list)

    @property
    def split(self) -> tuple[list[int], list[int]]:
        return self.data.split(self.learning.n_train)


def learning_groups(
    simulator: DynamicPETSimulator,
    *,
    learning: LearningSettings | dict | None = None,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    dataset_dir: str = "",
    validation_fraction: float = 0.2,
    subject_seed: int = 0,
    dose: float = 300e6,
) -> list[LearningGroup]:
    """The groups ``train.json`` learns: the user's exam groups under ``dataset_dir`` (see :func:`exam_groups`; every
    exam read and checked before the first step), or without it one simulated group (``subject_seed``, ``dose``).

    A user's group of ``N`` realisations learns from the first ``N - ceil(validation_fraction N)`` and validates on
    the rest, with batches of at most its training realisations; its dose is each exam's ``total_counts /
    slice_fraction``.

    Raises:
        FileNotFoundError: no exam, or an exam without its reference or sinograms.
        ValueError: a group of fewer than 2 exams, exams of a group that are not realisations of one exam, exams on
            another grid than the bundle's, or a ``validation_fraction`` outside (0, 1).
    """
    import math

    learning, solver = _settings(LearningSettings, learning), _settings(SolverSettings, solver)
    if not dataset_dir:
        data = _simulate(simulator, float(dose), int(subject_seed), learning)
        name = f"subject{int(subject_seed)}_dose{float(dose) / 1e6:g}M"
        return [LearningGroup(name, float(dose), int(subject_seed), data, learning, solver.problem(data, device))]
    if not 0 < float(validation_fraction) < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}.")
    groups = []
    for name, folders in exam_groups(dataset_dir).items():
        data = exam_realisations(folders, slice_fraction=learning.slice_fraction)
        _check_grid(data, simulator, name)
        n = data.n_realisations
        n_train = n - max(1, math.ceil(float(validation_fraction) * n))
        settings = dataclasses.replace(learning, n_realisations=n, n_train=n_train, batch_size=min(learning.batch_size, n_train))
        groups.append(LearningGroup(name, float(data.dose), -1, data, settings, solver.problem(data, device), [str(p) for p in folders]))
    return groups


def group_weights(groups: Sequence[LearningGroup], learning: LearningSettings | dict | None = None, per_frame: bool = True):
    """The initial :class:`~monai_ext.dynamic_pet.GroupWeights` of ``groups`` (``eta_init``, ``lambda_init``)."""
    from monai_ext.dynamic_pet import GroupWeights

    learning = _settings(LearningSettings, learning)
    return GroupWeights([RegularisationWeights(g.data.n_frames, learning.eta_init, learning.lambda_init, per_frame=per_frame) for g in groups])


def write_learning(
    groups: Sequence[LearningGroup],
    network,
    step,
    validation,
    simulator: DynamicPETSimulator,
    *,
    solver: SolverSettings | dict | None = None,
    device: str | torch.device = "cpu",
    output_dir: str,
    dataset_dir: str = "",
    dose_model_file: str | None = None,
) -> dict:
    """What the engines learned, written as :func:`learn_case` writes it, once ``train#trainer`` has run.

    Each group's ``learned_hyperparameters.json`` (weights, last-epoch training MSE, validation MSE of the learned
    and of the initial weights, frame SNRs, compute seconds, per-step history) goes to ``output_dir`` for the
    simulated group and to ``output_dir/<group>`` for a user's groups; for a user's data set also
    ``learning_record.json`` and, with learned weights at 2 doses or more, the dose model refitted against ``D``
    (as :func:`dose_sweep`) in ``dose_model_file`` with its figures.

    Args:
        groups: the learned groups (:func:`learning_groups`).
        network: the trainer's :class:`~monai_ext.dynamic_pet.GroupWeights`.
        step: the trainer's :class:`~monai_ext.dynamic_pet.HypergradientStep` (seconds, history).
        validation: the evaluator's :class:`~monai_ext.dynamic_pet.ValidationStep` (its last validation MSEs).
    """
    solver = _settings(SolverSettings, solver)
    network = getattr(network, "module", network)
    runs = []
    for k, group in enumerate(groups):
        weights, last = network.groups[k], validation.last[k]
        if last is None:
            raise RuntimeError(f"group {group.name} was never validated: the trainer must run to its last epoch first.")
        snr = frame_snr(group.data)
        values = weights.values()
        out = {
            "subject_seed": group.subject_seed,
            "dose": group.dose,
            "setting": simulation_setting(simulator, solver, group.learning.slice_fraction),
            "learning": dataclasses.asdict(group.learning),
            "solver": dataclasses.asdict(solver),
            "device": str(device),
            "world_size": rank_and_world_size()[1],
            "n_parameters": weights.n_parameters,
            "eta": values["eta"],
            "lambdas": values["lambdas"],
            "train_mse": step.epoch_loss(k),
            "val_mse": last["val_mse"],
            "initial_val_mse": last["initial_val_mse"],
            "validated_epoch": last["epoch"],
            "seconds": step.seconds[k],
            "wall_seconds": step.wall_seconds[k],
            "clock": group.problem.clock().kind,
            "frame_snr": snr,
            "spearman_lambda_snr": _spearman(values["lambdas"], snr),
            "history": step.history[k],
        }
        if group.exams:
            out["exams"] = group.exams
        folder = Path(output_dir) / group.name if dataset_dir else Path(output_dir)
        if is_main_process():
            logger.info(f"learned {group.name}: val MSE {out['initial_val_mse']:.5f} -> {out['val_mse']:.5f}, eta {out['eta']:.4g}, "
                        f"{out['seconds']:.1f} s")
            save_json(out, folder / "learned_hyperparameters.json")
        runs.append({"group": group.name, "exams": group.exams, "dose": group.dose, "eta": out["eta"], "lambdas": out["lambdas"],
                     "val_mse": out["val_mse"], "initial_val_mse": out["initial_val_mse"], "seconds": out["seconds"]})
    record = {"dataset_dir": str(dataset_dir), "groups": runs}
    if not dataset_dir:
        barrier()
        return record
    doses = sorted({r["dose"] for r in runs})
    if len(doses) >= 2:
        setting = {**simulation_setting(simulator, solver, groups[0].learning.slice_fraction), "groups": [r["group"] for r in runs]}
        model = DoseModel.fit([r["dose"] for r in runs], [r["eta"] for r in runs], [r["lambdas"] for r in runs], setting=setting)
        record["dose_model"] = {"refitted": True, "file": dose_model_file, **model.as_dict()}
        if is_main_process():
            save_dose_fits(model, Path(output_dir))
            if dose_model_file:
                model.save(dose_model_file)
    else:
        record["dose_model"] = {"refitted": False, "why": f"learned weights at {len(doses)} dose(s); the dose model is fitted against D and needs 2 or more"}
        logger.warning(f"dose model not refitted: {record['dose_model']['why']}.")
    if is_main_process():
        save_json(record, Path(output_dir) / "learning_record.json")
    barrier()
    return record


def save_dose_fits(model: DoseModel, output_dir: str | Path) -> list[Path]:
    """``eta_dose_fits.png`` (learned ``eta_D`` and the four fits with their R^2, like the paper's Fig. 2) and
    ``lambda_dose_fits.png`` (learned ``lambda_{t,D}`` of a few frames with their kept fits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_ext.dynamic_pet.dose_model import DoseFit

    doses = np.asarray(model.learned["doses"]) / model.dose_unit
    grid = np.linspace(doses.min(), doses.max(), 200)
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.plot(doses, model.learned["eta"], "ko", label="learned (DEQ)")
    for name, spec in model.learned["fits"]["eta"].items():
        fit = DoseFit.from_dict(spec)
        ax.plot(grid, fit(grid), label=f"{name.replace('_', ' ')}, $R^2$ = {fit.r2:.3f}")
    ax.set_xlabel("D (million counts)")
    ax.set_ylabel(r"$\eta_D$")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, Path(output_dir) / "eta_dose_fits.png", bbox_inches="tight"))

    lam = np.asarray(model.learned["lambdas"])
    frames = sorted({0, 4, 9, 14, lam.shape[1] - 1} & set(range(lam.shape[1])))
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for t in frames:
        (line,) = ax.plot(doses, lam[:, t], "o", label=f"frame {t + 1} ({model.lambdas[t].model.replace('_', ' ')}, "
                                                       f"$R^2$ = {model.lambdas[t].r2:.3f})")
        ax.plot(grid, model.lambdas[t](grid), color=line.get_color())
    ax.set_xlabel("D (million counts)")
    ax.set_ylabel(r"$\lambda_{t,D}$")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, Path(output_dir) / "lambda_dose_fits.png", bbox_inches="tight"))
    return paths


"""What a training run needs beyond MONAI's engines: resumption that continues the same run (random states
included), a record of what the model learned from beside its weights, inference that honours that record, and a
progress bar.

- :class:`RunState` goes into the trainer's checkpoint with the model, optimiser, scheduler and engine: a
  resumed run draws the same shuffles and the same noise as the run it continues, so it reaches the same step with
  the same loss.
- :func:`resume_checkpoint` turns ``--resume true`` (the newest ``checkpoint_epoch=N.pt``) or an explicit path into
  the file MONAI's ``CheckpointLoader`` loads.
- :class:`SaveBestModel` writes the best weights and ``<weights>.training.json`` beside them (geometry, ``I0``,
  data set, best validation metric); :func:`run_geometry` refuses to run weights at another geometry.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from pathlib import Path

import numpy as np
import torch

__all__ = ["RunState", "attach_handlers", "resume_checkpoint", "SaveBestModel", "stored_state_dict", "write_training_record", "FinalValidation", "record_path", "read_record", "run_geometry", "check_trained_geometry", "ProgressBar"]

_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


class RunState:
    """What a resumed run needs beyond the model, optimiser, scheduler and engine, as a checkpointable object
    (``state_dict``/``load_state_dict``): torch's, numpy's and Python's global generators (the data loader's
    shuffle draws from torch's), the generator of every randomised transform given, and the evaluator's best
    metric so far (so that a resumed run keeps the better model it had, not the first it validates).

    Args:
        transforms: MONAI transforms or a ``Compose``; the ``Randomizable`` ones (with an ``R``) are saved.
        evaluator: the validation engine whose ``best_metric`` and ``best_metric_epoch`` are kept.
        generators: torch generators of the run's own draws (e.g. the rays of a neural-field training).
    """

    def __init__(self, transforms=(), evaluator=None, generators: tuple = ()) -> None:
        items = getattr(transforms, "transforms", transforms) or ()
        self.transforms = list(dict.fromkeys(t for t in _flatten(items) if hasattr(t, "R")))
        self.evaluator = evaluator
        self.generators = list(generators or ())

    def state_dict(self) -> dict:
        best = (float(self.evaluator.state.best_metric), int(self.evaluator.state.best_metric_epoch)) if self.evaluator is not None else (0.0, -1)
        return {
            "best_metric": best[0],
            "best_metric_epoch": best[1],
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": _python_state(random.getstate()),
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(f"the checkpoint holds the random states of {len(state['transforms'])} transform(s); this run has "
                             f"{len(self.transforms)}: resume with the configuration that wrote it.")
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        random.setstate((state["python"][0], tuple(int(v) for v in state["python"][1].tolist()), state["python"][2]))
        for transform, saved in zip(self.transforms, state["transforms"]):
            transform.R.set_state(_numpy_tuple(saved))
        generators = state.get("generators", [])
        if len(generators) != len(self.generators):
            raise ValueError(f"the checkpoint holds {len(generators)} generator state(s); this run has {len(self.generators)}: "
                             "resume with the configuration that wrote it.")
        for generator, saved in zip(self.generators, generators):
            generator.set_state(saved)
        if self.evaluator is not None:
            self.evaluator.state.best_metric = float(state["best_metric"])
            self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


def _flatten(items):
    for item in items:
        inner = getattr(item, "transforms", None)
        if isinstance(inner, (list, tuple)):
            yield from _flatten(inner)
        else:
            yield item
            for attr in ("counts", "transform"):  # dictionary wrappers hold their array transform
                if hasattr(getattr(item, attr, None), "R"):
                    yield getattr(item, attr)


def _numpy_state(state: tuple) -> dict:
    # tensors and numbers only: MONAI loads checkpoints with torch.load(weights_only=True)
    return {"keys": torch.from_numpy(np.asarray(state[1], dtype=np.int64)), "pos": int(state[2]), "has_gauss": int(state[3]), "gauss": float(state[4])}


def _numpy_tuple(saved: dict) -> tuple:
    return ("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["gauss"])


def _python_state(state: tuple) -> tuple:
    return (state[0], torch.tensor(state[1], dtype=torch.int64), state[2])


def attach_handlers(engine, handlers) -> None:
    """Attach ``handlers`` to ``engine`` after it is built: those that hold the engine itself (a checkpoint of the
    trainer's state, to resume from) cannot be among the handlers it is built with."""
    for handler in handlers:
        handler.attach(engine)


def resume_checkpoint(resume, checkpoint_dir: str) -> str:
    """The trainer checkpoint to resume from: ``""`` for ``resume`` false, the newest ``checkpoint_epoch=N.pt`` of
    ``checkpoint_dir`` for true, or ``resume`` itself when it is a path.

    Raises:
        FileNotFoundError: ``resume`` is true and ``checkpoint_dir`` holds no checkpoint, or a path that does not
            exist.
    """
    from monai_ext.flags import as_flag_or_file

    chosen = as_flag_or_file(resume, "resume", "a trainer checkpoint (checkpoint_epoch=N.pt)")
    if chosen is not True:
        return str(chosen) if chosen else ""
    found = sorted((int(m.group(1)), p) for p in Path(checkpoint_dir).glob("*checkpoint_epoch=*.pt") if (m := _CHECKPOINT.search(p.name)))
    if not found:
        raise FileNotFoundError(f"--resume true, but {checkpoint_dir} holds no trainer checkpoint (checkpoint_epoch=N.pt): "
                                "start without --resume, or give the checkpoint's path.")
    return str(found[-1][1])


def record_path(weights_file: str) -> Path:
    """``models/model.pt`` -> ``models/model.training.json``."""
    path = Path(weights_file)
    return path.with_name(path.stem + ".training.json")


def read_record(weights_file: str) -> dict | None:
    """The training record beside ``weights_file``, or ``None`` when it has none.

    Raises:
        ValueError: the record is not valid JSON or lacks its geometry.
    """
    path = record_path(weights_file)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"training record {path} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or "geometry" not in record:
        raise ValueError(f"training record {path} lacks the 'geometry' its weights were trained at.")
    return record


class SaveBestModel:
    """An evaluator handler that keeps the best model and what it learned from: each time the key metric improves,
    the network's weights go to ``weights_file`` (a plain state dict, as MONAI's ``CheckpointSaver`` writes a lone
    object) and ``<weights>.training.json`` beside it records the geometry, ``i0``, the data set's summary, the
    metric and the settings. Both are written atomically. It follows the evaluator's ``best_metric``, which
    :class:`RunState` restores on resumption: a resumed run never replaces a better model with a worse one.

    Args:
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped).
        weights_file: where the best weights go.
        geometry: the training geometry.
        i0: photons per detector pixel of the simulated scans (``None``: noise-free).
        dataset: the data set's summary (``monai_ext.io.TrainingSet.summary()`` or the built-in phantoms').
        settings: anything else to keep (method, epochs, batch size, learning rate).
        save: ``save(network, path)`` writes the weights in another form than a plain state dict (e.g. a
            neural-field backbone with its constructor arguments); the default is ``torch.save(state_dict)``.
        storage_dtype: with the default save, floating-point tensors are stored in this dtype (e.g.
            ``"float16"``, which halves the file; ``load_state_dict`` casts them back to the network's dtype);
            ``None`` keeps them as they are. Recorded in the training record's settings.
    """

    def __init__(self, network, weights_file: str, geometry, i0, dataset: dict, settings: dict | None = None, save=None,
                 storage_dtype: str | torch.dtype | None = None) -> None:
        self.network = network
        self.weights_file = str(weights_file)
        self.geometry, self.i0, self.dataset, self.settings = geometry, i0, dict(dataset), dict(settings or {})
        self.save = save
        self.storage_dtype = None if storage_dtype is None else _float_dtype(storage_dtype)
        if self.storage_dtype is not None:
            if save is not None:
                raise ValueError("SaveBestModel: give save or storage_dtype, not both (storage_dtype applies to the default save).")
            self.settings["storage_dtype"] = str(self.storage_dtype).replace("torch.", "")

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        from monai_ext.io.files import atomic_path

        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return
        network = getattr(self.network, "module", self.network)
        Path(self.weights_file).parent.mkdir(parents=True, exist_ok=True)
        if self.save is not None:
            self.save(network, self.weights_file)
        else:
            with atomic_path(self.weights_file, suffix=".pt") as tmp:
                torch.save(stored_state_dict(network, self.storage_dtype), tmp)
        write_training_record(self.weights_file, self.geometry, self.i0, self.dataset,
                              {"metric": engine.state.key_metric_name, "value": float(engine.state.best_metric), "epoch": int(engine.state.epoch)},
                              self.settings)


def _float_dtype(dtype: str | torch.dtype) -> torch.dtype:
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"storage_dtype must name a floating-point torch dtype (e.g. 'float16'), got {dtype!r}.")
    return value


def stored_state_dict(network: torch.nn.Module, dtype: str | torch.dtype | None = None) -> dict:
    """``network.state_dict()`` with its floating-point tensors cast to ``dtype`` (``None``: unchanged).

    Example:
        >>> state = stored_state_dict(torch.nn.Linear(2, 1), "float16")
        >>> state["weight"].dtype
        torch.float16
    """
    state = network.state_dict()
    if dtype is None:
        return state
    dtype = _float_dtype(dtype)
    return type(state)((k, v.to(dtype) if v.is_floating_point() else v) for k, v in state.items())


def write_training_record(weights_file: str, geometry, i0, dataset: dict, validation: dict, settings: dict | None = None) -> Path:
    """Write ``<weights>.training.json`` (atomically): the geometry, ``i0``, the data set's summary, the validation
    metric and the settings a model was trained with; returns its path."""
    from monai_ext.io.files import geometry_to_dict, save_json

    record = {
        "weights": Path(weights_file).name,
        "geometry": geometry_to_dict(geometry),
        "i0": None if i0 is None else float(i0),
        "dataset": dict(dataset),
        "validation": dict(validation),
        "training": dict(settings or {}),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return save_json(record, record_path(weights_file))


def run_geometry(geometry, geometry_file: str = "", weights_file: str = ""):
    """The geometry an inference run reconstructs at: ``geometry_file``'s if given, else the config's ``geometry``;
    checked against the training record of ``weights_file`` when one is given (:func:`check_trained_geometry`).

    Raises:
        ValueError: a geometry file of another kind of scan, or weights trained at another geometry.
    """
    from monai_ext.io.training_sets import check_geometry_kind, read_geometry_file

    chosen = check_geometry_kind(read_geometry_file(geometry_file), geometry, f"geometry_file {geometry_file}") if geometry_file else geometry
    if weights_file:
        check_trained_geometry(chosen, weights_file, geometry_file)
    return chosen


def check_trained_geometry(geometry, weights_file: str, geometry_file: str = "", grid_only: bool = False, adapt=False) -> None:
    """Refuse to run ``weights_file`` at ``geometry`` when its training record says it was trained at another one
    (weights without a record are not checked), unless ``adapt``: then say so in the log and let the run go on.

    Args:
        geometry: the run's geometry.
        weights_file: the weights to run (their record is ``<weights>.training.json``).
        geometry_file: where ``geometry`` came from, for the message.
        grid_only: compare the field of view only (shape times voxel size), for models that depend neither on the
            acquisition nor on the sampling grid (a neural-field backbone is a continuous prior over volumes in its
            box, fitted to any scan of it and sampled on any grid).
        adapt: run the weights at ``geometry`` anyway (``--resample true``): a learned iterative network (LPD,
            unrolled) then applies this run's projector with the weights learned at the training geometry, a
            post-processing network sees the artefacts of this geometry; the log names both geometries.

    Raises:
        ValueError: the weights were trained at another geometry (both are named, and how to run at theirs).
    """
    import logging

    from monai_ext.flags import as_flag
    from monai_ext.io.files import geometry_from_dict
    from monai_ext.tomo.adaptation import describe_geometry, same_geometry

    record = read_record(weights_file)
    if record is None:
        return
    trained = geometry_from_dict(record["geometry"])
    if grid_only:
        trained_box = [n * d for n, d in zip(trained.image_shape, trained.pixel_size)]
        box = [n * d for n, d in zip(geometry.image_shape, geometry.pixel_size)]
        if len(box) != len(trained_box) or not all(abs(a - b) <= 1e-6 * b for a, b in zip(trained_box, box)):
            raise ValueError(f"{Path(weights_file).name} was trained for a field of view of {_mm_box(trained_box)}, and this run's is "
                             f"{_mm_box(box)}: run with --geometry_file {record_path(weights_file)}, or --resample true for images on "
                             "another grid.")
        return
    if not same_geometry(trained, geometry):
        source = f"geometry_file {geometry_file}" if geometry_file else "the config"
        if as_flag(adapt, "resample"):
            logging.getLogger(__name__).warning(
                f"{Path(weights_file).name} was trained at {describe_geometry(trained)} and runs at {describe_geometry(geometry)} "
                f"({source}) because of --resample true: expect it to score below its training figures.")
            return
        raise ValueError(f"{Path(weights_file).name} was trained at {describe_geometry(trained)}, and this run's geometry ({source}) is "
                         f"{describe_geometry(geometry)}: run with --geometry_file {record_path(weights_file)} to reconstruct at the "
                         "training geometry, or --resample true to run these weights at this geometry anyway.")


def _mm_box(sizes) -> str:
    return " x ".join(f"{v:g}" for v in sizes) + " mm"


class FinalValidation:
    """A trainer handler that validates after the last epoch when ``val_interval`` does not divide ``max_epochs``
    (MONAI's ``ValidationHandler`` validates every ``interval`` epochs only): the best model is never one that
    the last epochs could have beaten unseen, and a run shorter than ``val_interval`` still writes its weights.

    Args:
        validator: the evaluator.
        interval: the ``ValidationHandler``'s interval.
    """

    def __init__(self, validator, interval: int) -> None:
        self.validator, self.interval = validator, int(interval)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and epoch % self.interval:
            self.validator.run(epoch)


class ProgressBar:
    """A tqdm progress bar over an engine's iterations (ignite's), showing the loss; ``enabled=False`` attaches none."""

    def __init__(self, enabled=True, loss_key: str = "loss") -> None:
        from monai_ext.flags import as_flag

        self.enabled = as_flag(enabled, "progress")
        self.loss_key = loss_key

    def attach(self, engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar as IgniteProgressBar

        key = self.loss_key

        def loss(output):
            first = output[0] if isinstance(output, (list, tuple)) else output
            return {key: float(first[key])} if isinstance(first, dict) and key in first else {}

        IgniteProgressBar(persist=False).attach(engine, output_transform=loss)

"""Training on a user's own data at the user's geometry (issue 20); ``pytest -k own_data`` selects these.

Each data set is generated here in the layout a user gives (``training/`` and ``validation/`` folders of NIfTI
images with their spacing, and a geometry JSON), and trained through the bundle's ``train.json`` as
``monai.bundle run`` would. The checks:

- a bad data set stops the run before the first step, with a message naming the file and the problem;
- a run interrupted after an epoch and resumed with ``resume=true`` takes the same steps with the same losses and
  ends with the same weights as the run that was never interrupted;
- the trained weights carry a record of their geometry, ``I0`` and data set, and inference refuses another
  geometry unless given the record's;
- (slow) the learned primal-dual network trained for a few minutes on 2 cores beats FBP/FDK on held-out cases by
  at least 3 dB, at a geometry unlike the bundle's: CT 96 x 96 at 2.5 mm with 12 views, CBCT 24^3 at 6 mm with
  10 views.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_config import bundle_parser

from monai_ext.io import geometry_to_dict, save_nifti, training_set

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT / "bundles" / "ct_learned_reconstruction"
CBCT = ROOT / "bundles" / "cbct_learned_primal_dual"

torch.set_num_threads(2)


def _write_cases(images: torch.Tensor, folder: Path, spacing, prefix: str = "case") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [save_nifti(image[0].numpy(), folder / f"{prefix}{i:03d}.nii.gz", spacing=list(spacing)) for i, image in enumerate(images)]


def _write_geometry(folder: Path, geometry) -> Path:
    """``folder/geometry.json`` in the sidecars' schema, as a user gives ``--geometry_file``."""
    path = folder / "geometry.json"
    path.write_text(json.dumps({"geometry": geometry_to_dict(geometry)}))
    return path


def _ct_geometry(shape, spacing, n_views):
    from monai_ext.tomo import ParallelBeamGeometry, uniform_angles

    return ParallelBeamGeometry(tuple(shape), spacing, uniform_angles(n_views), shape[-1], spacing)


def _ct_dataset(root: Path, n_train: int, n_val: int, shape=(96, 96), spacing=2.5, n_views=12, seed=7) -> Path:
    from monai_ext.data import ellipse_images

    images = ellipse_images(n_train + n_val, shape, spacing, seed=seed)
    _write_cases(images[:n_train], root / "training", (spacing, spacing))
    _write_cases(images[n_train:], root / "validation", (spacing, spacing), prefix="val")
    _write_geometry(root, _ct_geometry(shape, spacing, n_views))
    return root


def _trainer(bundle: Path, dataset: Path | None, out: Path, **overrides):
    """The bundle's trainer built from ``train.json`` for ``dataset`` (``None``: the built-in data), with its
    resumption handlers attached (the first ``run`` expression), and the losses it takes recorded as
    ``trainer.losses`` ``[(iteration, loss)]``."""
    from ignite.engine import Events

    settings = {"output_dir": str(out), "progress": False}
    if dataset is not None:
        settings.update(dataset_dir=str(dataset), geometry_file=str(dataset / "geometry.json"))
    parser = bundle_parser(bundle, "train.json", **{**settings, **overrides})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run#0")
    trainer = parser.get_parsed_content("train#trainer")
    trainer.losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: e.losses.append((e.state.iteration, _loss(e.state.output))))
    return parser, trainer


def _loss(output) -> float:
    """The loss of an iteration's output: a decollated list of dicts (MONAI's default) or one dict."""
    return float((output[0] if isinstance(output, list) else output)["loss"])


def _stop_after(trainer, epoch: int) -> None:
    """Interrupt ``trainer`` at the end of ``epoch``, after its checkpoint is written (as a killed run would be)."""
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epoch), lambda e: e.terminate())


def _interrupted_and_resumed(bundle: Path, dataset: Path | None, out: Path, **overrides):
    """Train for one epoch and stop (as a killed run would, after its checkpoint), then run again with
    ``resume=true``; returns the losses before the stop and the resumed run's parser and trainer."""
    parser, trainer = _trainer(bundle, dataset, out, **overrides)
    _stop_after(trainer, 1)
    trainer.run()
    before = trainer.losses
    parser, trainer = _trainer(bundle, dataset, out, resume=True, **overrides)
    trainer.run()
    return before, parser, trainer


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _weights(parser) -> dict:
    return {k: v.clone() for k, v in parser.get_parsed_content("network").state_dict().items()}


# ---------------------------------------------------------------------------------------------------------- bad data


def _bad_dataset(kind: str, root: Path) -> tuple[Path, str, str]:
    """A data set with one defect; returns ``(dataset_dir, geometry_file, words the error must contain)``."""
    from monai_ext.data import ellipse_images

    images = ellipse_images(4, (32, 32), 5.0, seed=1)
    _write_cases(images[:3], root / "training", (5.0, 5.0))
    _write_cases(images[3:], root / "validation", (5.0, 5.0), prefix="val")
    geometry = _write_geometry(root, _ct_geometry((32, 32), 5.0, 6))
    if kind == "mismatched_shapes":
        save_nifti(ellipse_images(1, (40, 40), 5.0)[0, 0].numpy(), root / "training" / "case001.nii.gz", spacing=[5.0, 5.0])
        return root, "", "case001.nii.gz"
    if kind == "spacing_disagrees":
        save_nifti(images[1, 0].numpy(), root / "training" / "case001.nii.gz", spacing=[4.0, 4.0])
        return root, str(geometry), "disagrees"
    if kind == "empty_validation":
        for path in (root / "validation").iterdir():
            path.unlink()
        return root, str(geometry), "validation list is empty"
    if kind == "missing_reference":
        from monai_ext.io import save_projections

        save_projections(torch.zeros(6, 32), _ct_geometry((32, 32), 5.0, 6), root / "training" / "scan.npz")
        return root, str(geometry), "scan_reference.nii.gz"
    if kind == "nan":
        import nibabel as nib

        bad = images[2, 0].numpy().T.copy()  # NIfTI (x, y) order; our writer refuses NaN, a user's may not
        bad[5, 5] = np.nan
        nib.save(nib.Nifti1Image(bad, np.diag([5.0, 5.0, 1.0, 1.0])), str(root / "training" / "case002.nii.gz"))
        return root, str(geometry), "case002.nii.gz"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mismatched_shapes", "spacing_disagrees", "empty_validation", "missing_reference", "nan"])
def test_own_data_bad_dataset_stops_before_training(kind, tmp_path):
    dataset, geometry_file, words = _bad_dataset(kind, tmp_path / "data")
    parser = bundle_parser(CT, "train.json", dataset_dir=str(dataset), geometry_file=geometry_file, output_dir=str(tmp_path / "out"))
    parser.get_parsed_content("initialize")
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("train#trainer")
    cause = _root_cause(info.value)
    assert isinstance(cause, (ValueError, FileNotFoundError)) and words in str(cause), str(cause)
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def test_own_data_datalist_json_and_flat_folder(tmp_path):
    """The same cases given as a MONAI datalist JSON, or as a flat folder split by name, give the same data set."""
    from monai_ext.data import ellipse_images

    images = ellipse_images(5, (32, 32), 5.0, seed=2)
    paths = _write_cases(images, tmp_path / "flat", (5.0, 5.0))
    bundle = _ct_geometry((64, 64), 4.0, 5)
    flat = training_set(str(tmp_path / "flat"), bundle)
    assert [Path(c["reference"]).name for c in flat.validation] == ["case004.nii.gz"]
    listing = tmp_path / "datalist.json"
    listing.write_text(json.dumps({"training": [{"image": f"flat/{p.name}"} for p in paths[:4]], "validation": [{"image": f"flat/{paths[4].name}"}]}))
    listed = training_set(str(listing), bundle)
    assert [c["reference"] for c in listed.training] == [c["reference"] for c in flat.training]
    # the bundle's views carried over to the images' grid
    assert listed.geometry.image_shape == (32, 32) and listed.geometry.pixel_size == (5.0, 5.0) and len(listed.geometry.angles) == 5
    assert listed.summary()["n_training"] == 4 and listed.summary()["spacing_mm"] == [5.0, 5.0]


# ------------------------------------------------------------------------------------------------------- resumption


def test_own_data_resumed_run_continues_with_the_same_steps_and_losses(tmp_path):
    """3 epochs uninterrupted vs. 1 epoch, interrupted, then ``resume=true``: the resumed run starts at the step
    after the checkpoint and takes the same steps with bitwise the same losses, and ends with the same weights."""
    dataset = _ct_dataset(tmp_path / "data", n_train=12, n_val=2, shape=(32, 32), spacing=5.0, n_views=6)
    small = {"training_settings#lpd#max_epochs": 3, "training_settings#lpd#batch_size": 4}

    parser, trainer = _trainer(CT, dataset, tmp_path / "whole", **small)
    trainer.run()
    whole, whole_weights = trainer.losses, _weights(parser)
    assert [i for i, _ in whole] == list(range(1, 10))

    parser, trainer = _trainer(CT, dataset, tmp_path / "cut", **small)
    _stop_after(trainer, 1)
    trainer.run()
    assert trainer.losses == whole[:3]
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()

    parser, trainer = _trainer(CT, dataset, tmp_path / "cut", resume=True, **small)
    trainer.run()
    assert trainer.losses == whole[3:]
    resumed = _weights(parser)
    assert all(torch.equal(resumed[k], whole_weights[k]) for k in whole_weights)

    record = json.loads((tmp_path / "cut" / "models" / "model.training.json").read_text())
    assert record["dataset"]["n_training"] == 12 and record["dataset"]["spacing_mm"] == [5.0, 5.0]
    assert record["geometry"] == json.loads((dataset / "geometry.json").read_text())["geometry"]
    assert record["i0"] == 1e4 and record["validation"]["metric"] == "val_psnr"


def test_own_data_resume_without_a_checkpoint_is_an_error(tmp_path):
    dataset = _ct_dataset(tmp_path / "data", n_train=4, n_val=1, shape=(32, 32), spacing=5.0, n_views=6)
    parser = bundle_parser(CT, "train.json", dataset_dir=str(dataset), output_dir=str(tmp_path / "out"), resume="true", progress=False)
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("run")
    assert "--resume true, but" in str(_root_cause(info.value)) and "holds no trainer checkpoint" in str(_root_cause(info.value))


# ------------------------------------------------------------------------------------ inference honours the record


def test_own_data_inference_refuses_another_geometry_than_the_record(tmp_path):
    from monai_ext.workflows import run_geometry
    from monai_ext.io import read_geometry_file

    dataset = _ct_dataset(tmp_path / "data", n_train=4, n_val=1, shape=(32, 32), spacing=5.0, n_views=6)
    parser, trainer = _trainer(CT, dataset, tmp_path / "out", **{"training_settings#lpd#max_epochs": 1})
    trainer.run()
    weights = tmp_path / "out" / "models" / "model.pt"
    record = weights.with_name("model.training.json")
    bundle_geometry = bundle_parser(CT).get_parsed_content("bundle_geometry")
    with pytest.raises(ValueError, match="was trained at parallel beam: 32 x 32 at 5 mm, 6 views"):
        run_geometry(bundle_geometry, "", str(weights))
    assert run_geometry(bundle_geometry, str(record), str(weights)) == read_geometry_file(dataset / "geometry.json")
    # and through inference.json: the trained network reconstructs a held-out image at its geometry
    (tmp_path / "test").mkdir()
    _write_cases(torch.rand(1, 1, 32, 32) * 0.02, tmp_path / "test", (5.0, 5.0))
    infer = bundle_parser(CT, dataset_dir=str(tmp_path / "test"), weights_dir=str(weights.parent), geometry_file=str(record), output_dir=str(tmp_path / "inf"))
    infer.get_parsed_content("initialize")
    infer.get_parsed_content("run")
    summary = json.loads((tmp_path / "inf" / "summary.json").read_text())
    assert summary["cases"][0]["shape"] == [32, 32] and summary["cases"][0]["spacing_mm"] == [5.0, 5.0]


# -------------------------------------------------------------------------------------- trained LPD beats FBP / FDK


def _infer_psnr(bundle: Path, test_dir: Path, out: Path, **overrides) -> float:
    parser = bundle_parser(bundle, dataset_dir=str(test_dir), output_dir=str(out), **overrides)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    cases = json.loads((out / "summary.json").read_text())["cases"]
    return float(np.mean([c["psnr_db"] for c in cases]))


def _trained_against_analytic(bundle: Path, tmp_path: Path, analytic: str) -> tuple[float, float]:
    """Mean PSNR on ``tmp_path/test`` of the network trained into ``tmp_path/out/models`` and of ``analytic``
    (FBP/FDK), both at the training record's geometry."""
    models = tmp_path / "out" / "models"
    record = str(models / "model.training.json")
    learned = _infer_psnr(bundle, tmp_path / "test", tmp_path / "learned", weights_dir=str(models), geometry_file=record)
    return learned, _infer_psnr(bundle, tmp_path / "test", tmp_path / analytic, method=analytic, geometry_file=record)


def _train_interrupted_and_resumed(bundle: Path, dataset: Path, out: Path, stop_epoch: int, **overrides) -> tuple[list, list]:
    """Train, interrupted after ``stop_epoch`` and resumed to the end; returns both runs' losses."""
    _, first = _trainer(bundle, dataset, out, **overrides)
    _stop_after(first, stop_epoch)
    first.run()
    _, second = _trainer(bundle, dataset, out, resume=True, **overrides)
    second.run()
    return first.losses, second.losses


@pytest.mark.slow
def test_own_data_ct_lpd_beats_fbp_at_the_users_geometry(tmp_path):
    """CT 96 x 96 at 2.5 mm, 12 views, I0 1e4: 200 training images, 8 epochs of batch 4 (about 2 minutes on 2
    cores, interrupted after epoch 4 and resumed); on 4 held-out images LPD 27.8 dB vs FBP 22.5 dB when written."""
    dataset = _ct_dataset(tmp_path / "data", n_train=200, n_val=8)
    first, second = _train_interrupted_and_resumed(CT, dataset, tmp_path / "out", 4, **{"training_settings#lpd#max_epochs": 8,
                                                                                       "training_settings#lpd#batch_size": 4})
    assert first[-1][0] == 200 and second[0][0] == 201 and second[-1][0] == 400
    from monai_ext.data import ellipse_images

    _write_cases(ellipse_images(4, (96, 96), 2.5, seed=5000), tmp_path / "test", (2.5, 2.5), prefix="test")
    lpd, fbp = _trained_against_analytic(CT, tmp_path, "fbp")
    print(f"CT own data: LPD {lpd:.2f} dB, FBP {fbp:.2f} dB")
    assert lpd >= fbp + 3.0, (lpd, fbp)


def _thorax_volumes(n: int, shape=(24, 24, 24), spacing=6.0, first_seed: int = 0) -> tuple[torch.Tensor, int]:
    """``n`` thorax phantoms rasterised on the grid, from seed ``first_seed`` on; returns them and the next seed.

    Seeds whose rasterised phantom has negative attenuation are passed over (``thorax_phantom`` adds ellipsoids,
    and for some seeds a lung's negative increment reaches past the body's soft tissue, e.g. seed 3: a phantom
    defect noted in issue 21, which a training set of the user's must not contain)."""
    from monai_ext.phantoms import thorax_phantom

    volumes, seed = [], first_seed
    while len(volumes) < n:
        volume = thorax_phantom(shape[-1] * spacing, seed=seed).rasterize(tuple(shape), (spacing,) * 3, supersample=2)
        seed += 1
        if float(volume.min()) >= 0:
            volumes.append(volume[None])
    return torch.stack(volumes), seed


@pytest.mark.slow
def test_own_data_cbct_lpd_beats_fdk_at_the_users_geometry(tmp_path):
    """CBCT 24^3 at 6 mm, 10 views of a 24 x 24 panel, I0 1e5: 30 training volumes, 4 epochs of batch 1 (about 75 s
    on 2 cores, interrupted after epoch 2 and resumed); on 3 held-out volumes LPD 23.9 dB, FDK 19.6 dB when written
    (a longer run, 40 volumes for 10 epochs: LPD 29.3 dB, FDK 20.5 dB)."""
    from monai_ext.data import cbct_geometry

    volumes, seed = _thorax_volumes(33)
    test_volumes, _ = _thorax_volumes(3, first_seed=seed + 100)
    data = tmp_path / "data"
    _write_cases(volumes[:30], data / "training", (6.0,) * 3)
    _write_cases(volumes[30:], data / "validation", (6.0,) * 3, prefix="val")
    _write_cases(test_volumes, tmp_path / "test", (6.0,) * 3, prefix="test")
    _write_geometry(data, cbct_geometry(10, (24, 24, 24), 6.0, (24, 24)))
    first, second = _train_interrupted_and_resumed(CBCT, data, tmp_path / "out", 2, max_epochs=4)
    assert first[-1][0] == 60 and second[0][0] == 61 and second[-1][0] == 120
    lpd, fdk = _trained_against_analytic(CBCT, tmp_path, "fdk")
    print(f"CBCT own data: LPD {lpd:.2f} dB, FDK {fdk:.2f} dB")
    assert lpd >= fdk + 3.0, (lpd, fdk)


# ------------------------------------------------------------------------------- neural-field backbone, DEQ learning

NF = ROOT / "bundles" / "cbct_neural_field"
DEQ = ROOT / "bundles" / "dynamic_pet_deq_reconstruction"


def test_own_data_neural_field_backbone_trains_at_the_users_geometry(tmp_path):
    """One short run of the conditioned field's backbone on three volumes of 16^3 at 10 mm scanned with 8 views:
    the weights and their record (geometry, I0, data set, validation PSNR) are written, and inference with them
    refuses the bundle's geometry and runs at the record's."""
    from monai_ext.data import cbct_geometry

    volumes, _ = _thorax_volumes(4, shape=(16, 16, 16), spacing=10.0)
    data = tmp_path / "data"
    _write_cases(volumes[:3], data / "training", (10.0,) * 3)
    _write_cases(volumes[3:], data / "validation", (10.0,) * 3, prefix="val")
    _write_geometry(data, cbct_geometry(8, (16, 16, 16), 10.0, (16, 16)))
    out = tmp_path / "out"
    parser = bundle_parser(NF, "train.json", dataset_dir=str(data), geometry_file=str(data / "geometry.json"), output_dir=str(out), progress=False,
                           max_epochs=1, steps_per_epoch=3, scans_per_step=2, rays_per_step=64, **{"val_fit#n_steps": 2})
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    record = json.loads((out / "models" / "model.training.json").read_text())
    assert record["dataset"]["n_training"] == 3 and record["dataset"]["n_validation"] == 1 and record["dataset"]["spacing_mm"] == [10.0] * 3
    assert record["geometry"]["image_shape"] == [16, 16, 16] and len(record["geometry"]["angles"]) == 8 and record["i0"] == 1e5
    assert record["validation"]["metric"] == "val_psnr" and record["validation"]["epoch"] == 1 and record["training"]["backbone"]["hidden"] == 64
    backbone = str(out / "models" / "model.pt")
    infer = bundle_parser(NF, backbone_file=backbone, output_dir=str(tmp_path / "inf"), progress=False)
    infer.get_parsed_content("initialize")
    with pytest.raises(RuntimeError) as info:
        infer.get_parsed_content("run")
    assert "model.pt was trained for a field of view of 160 x 160 x 160 mm" in str(_root_cause(info.value))
    infer = bundle_parser(NF, backbone_file=backbone, geometry_file=str(out / "models" / "model.training.json"), output_dir=str(tmp_path / "inf"),
                          progress=False, **{"fit#conditioned#n_steps": 2})
    infer.get_parsed_content("initialize")
    infer.get_parsed_content("run")
    summary = json.loads((tmp_path / "inf" / "summary.json").read_text())
    assert summary["cases"][0]["shape"] == [16, 16, 16]


def _exam_groups(root: Path, simulator, doses, n_realisations: int, subject_seed: int = 2) -> Path:
    """One group folder per dose, each with ``n_realisations`` exams of one subject (``save_exam`` format)."""
    from monai_ext.dynamic_pet.noise_realisations import DEFAULT_SLICE_FRACTION
    from monai_ext.pet import save_exam

    for dose in doses:
        for k in range(n_realisations):
            exam = simulator.simulate(dose * DEFAULT_SLICE_FRACTION, subject_seed=subject_seed, noise_seed=100 + k)
            save_exam(exam, root / f"subject{subject_seed}_dose{dose / 1e6:g}M" / f"realisation{k}")
    return root


DEQ_SMALL = {"image_shape": [32, 32], "view_mashing": 8, "learning#epochs": 1, "learning#batch_size": 2, "solver#max_iter": 100,
             "solver#backward_max_iter": 20, "solver#validation_restarts": 0}


def test_own_data_deq_learns_from_exam_folders_and_refits_the_dose_model(tmp_path):
    """Two epochs of the DEQ learning (a MONAI trainer) on groups of user-format exams (one subject at 2 doses, 3
    realisations each): the learned weights per group, the learning record and the refitted dose model are written.
    Interrupted after its first epoch and resumed with ``resume=true``, the
    run continues with the same losses to the same weights (warm starts and generators restored)."""
    from monai_ext.dynamic_pet import DoseModel
    from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator

    simulator = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=8)
    data = _exam_groups(tmp_path / "exams", simulator, (200e6, 400e6), 3)
    settings = {**DEQ_SMALL, "learning#epochs": 2, "dataset_dir": str(data)}  # no geometry file: exams carry theirs
    out = tmp_path / "out"
    parser, trainer = _trainer(DEQ, None, out, **settings)
    trainer.run()
    parser.get_parsed_content("run#2")
    whole = trainer.losses
    assert [i for i, _ in whole] == [1, 2, 3, 4]  # one batch per group and epoch
    record = json.loads((out / "learning_record.json").read_text())
    assert [g["dose"] for g in record["groups"]] == [200e6, 400e6]
    assert all(len(g["lambdas"]) == 20 and g["eta"] > 0 and len(g["exams"]) == 3 for g in record["groups"])
    assert record["dose_model"]["refitted"] and (out / "eta_dose_fits.png").is_file()
    for group in record["groups"]:
        learned = json.loads((out / group["group"] / "learned_hyperparameters.json").read_text())
        assert learned["learning"]["n_train"] == 2 and learned["eta"] == group["eta"] and learned["validated_epoch"] == 2
        assert [h["epoch"] for h in learned["history"]] == [0, 1] and learned["val_mse"] > 0
    model = DoseModel.load(str(out / "dose_model.json"))
    assert len(model.lambdas) == 20

    before, parser, trainer = _interrupted_and_resumed(DEQ, None, tmp_path / "cut", **settings)
    assert before == whole[:2]
    parser.get_parsed_content("run#2")
    assert trainer.losses == whole[2:]
    resumed = json.loads((tmp_path / "cut" / "learning_record.json").read_text())
    assert [(g["eta"], g["lambdas"]) for g in resumed["groups"]] == [(g["eta"], g["lambdas"]) for g in record["groups"]]


def test_own_data_deq_engine_takes_the_steps_of_learn_case(tmp_path):
    """The bundle's trainer on its built-in case takes bitwise the steps of ``scripts.hyperparameters.learn_case``
    (the learning the comparison and the dose sweep run) and writes the same weights and validation MSEs."""
    settings = {**DEQ_SMALL, "learning#epochs": 2, "learning#n_realisations": 5, "learning#n_train": 4, "val_interval": 1}
    parser, trainer = _trainer(DEQ, None, tmp_path / "engine", **settings)
    trainer.run()
    parser.get_parsed_content("run#2")
    engine = json.loads((tmp_path / "engine" / "learned_hyperparameters.json").read_text())
    from scripts.hyperparameters import learn_case

    alone = learn_case(parser.get_parsed_content("simulator"), parser.get_parsed_content("dose"), parser.get_parsed_content("subject_seed"),
                       learning=parser.get_parsed_content("learning"), solver=parser.get_parsed_content("solver"))
    assert [h["loss"] for h in engine["history"]] == [h["loss"] for h in alone["history"]] and len(alone["history"]) == 4
    for key in ("eta", "lambdas", "train_mse", "val_mse", "initial_val_mse"):
        assert engine[key] == alone[key], key


def test_own_data_deq_refuses_exams_that_are_not_realisations_of_one_exam(tmp_path):
    from monai_ext.pet import BIOGRAPH_6_TRUEPOINT_TRUEV, DynamicPETSimulator, save_exam
    from monai_ext.dynamic_pet.noise_realisations import DEFAULT_SLICE_FRACTION

    simulator = DynamicPETSimulator(BIOGRAPH_6_TRUEPOINT_TRUEV, image_shape=(32, 32), view_mashing=8)
    data = _exam_groups(tmp_path / "exams", simulator, (300e6,), 2)
    group = next(data.iterdir())
    save_exam(simulator.simulate(300e6 * DEFAULT_SLICE_FRACTION, subject_seed=3, noise_seed=7), group / "other_subject")
    parser = bundle_parser(DEQ, "train.json", dataset_dir=str(data), output_dir=str(tmp_path / "out"), **DEQ_SMALL)
    parser.get_parsed_content("initialize")
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("run")
    assert "differ in activity" in str(_root_cause(info.value)) and "other_subject" in str(_root_cause(info.value))
    (group / "other_subject" / "activity.nii.gz").unlink()
    with pytest.raises(RuntimeError) as info:
        bundle_parser(DEQ, "train.json", dataset_dir=str(data), output_dir=str(tmp_path / "out"), **DEQ_SMALL).get_parsed_content("run")
    assert "has no reference image activity.nii.gz" in str(_root_cause(info.value))


def test_own_data_neural_field_engine_takes_the_steps_of_the_backbone_training_and_resumes(tmp_path):
    """The bundle's backbone trainer (a MONAI ``SupervisedTrainer``) takes bitwise the steps of
    ``train_conditioned_field`` (same scans, rays, losses and final backbone); interrupted after its first epoch and
    resumed with ``resume=true``, it continues with the same losses to the same weights."""
    from monai_ext.data import case_tensors
    from monai_ext.fields import ModulatedAttenuationField, box_half_widths, train_conditioned_field
    from monai_ext.fields.rendering import ConeBeamRays

    volumes, _ = _thorax_volumes(4, shape=(8, 8, 8), spacing=20.0)
    data = tmp_path / "data"
    _write_cases(volumes[:3], data / "training", (20.0,) * 3)
    _write_cases(volumes[3:], data / "validation", (20.0,) * 3, prefix="val")
    from monai_ext.data import cbct_geometry

    _write_geometry(data, cbct_geometry(6, (8, 8, 8), 20.0, (8, 8)))
    args = {"latent_channels": 2, "modulation_resolution": 4, "encoding": "grid", "hidden": 8, "n_hidden": 1, "seed": 0,
            "encoding_args": {"n_levels": 2, "features_per_level": 2, "base_resolution": 4, "finest_resolution": 8}}
    small = {"max_epochs": 3, "steps_per_epoch": 2, "scans_per_step": 2, "rays_per_step": 32, "n_samples": 8, "backbone_args": args,
             "val_fit#n_steps": 2}

    parser, trainer = _trainer(NF, data, tmp_path / "whole", **small)
    trainer.run()
    whole = trainer.losses
    backbone = {k: v.clone() for k, v in parser.get_parsed_content("network").backbone.state_dict().items()}
    assert [i for i, _ in whole] == list(range(1, 7))

    geometry = parser.get_parsed_content("geometry")
    projections = case_tensors(parser.get_parsed_content("train#dataset"))[1]
    reference = ModulatedAttenuationField(box_half_widths(geometry.image_shape, geometry.pixel_size), **args)
    _, info = train_conditioned_field(reference, projections, ConeBeamRays(geometry), n_steps=6, scans_per_step=2, rays_per_step=32,
                                      n_samples=8, lr=0.005, modulation_lr=0.03, final_lr_fraction=0.1, seed=0, progress=False)
    assert info["loss_trace"] == [loss for _, loss in whole]
    assert all(torch.equal(reference.state_dict()[k], backbone[k]) for k in backbone)

    before, parser, trainer = _interrupted_and_resumed(NF, data, tmp_path / "cut", **small)
    assert before == whole[:2]
    assert trainer.losses == whole[2:]
    resumed = parser.get_parsed_content("network").backbone.state_dict()
    assert all(torch.equal(resumed[k], backbone[k]) for k in backbone)
    saved = torch.load(tmp_path / "cut" / "models" / "model.pt", weights_only=True)
    assert saved["config"]["hidden"] == 8 and set(saved["state_dict"]) == set(backbone)


def test_own_data_shipped_ct_weights_refuse_another_geometry(tmp_path, caplog):
    """The shipped CT weights carry their records: LPD at 7 views (trained at 5) is refused, naming both; with
    ``--resample true`` it runs there and the log says at which geometry it was trained; FBP, which has no weights,
    runs there."""
    parser = bundle_parser(CT, n_views=7, output_dir=str(tmp_path / "lpd"))
    parser.get_parsed_content("initialize")
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("run")
    message = str(_root_cause(info.value))
    assert "model.pt was trained at parallel beam: 64 x 64 at 4 mm, 5 views" in message and "7 views" in message
    assert "--resample true" in message
    parser = bundle_parser(CT, n_views=7, resample=True, output_dir=str(tmp_path / "adapted"))
    parser.get_parsed_content("initialize")
    with caplog.at_level("WARNING"):
        parser.get_parsed_content("run")
    assert "model.pt was trained at parallel beam: 64 x 64 at 4 mm, 5 views" in caplog.text and "runs at parallel beam: 64 x 64 at 4 mm, 7 views" in caplog.text
    assert (tmp_path / "adapted" / "summary.json").is_file()
    parser = bundle_parser(CT, n_views=7, method="fbp", output_dir=str(tmp_path / "fbp"))
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    assert (tmp_path / "fbp" / "summary.json").is_file()


def test_own_data_shipped_cbct_lpd_weights_refuse_another_geometry(tmp_path):
    """The shipped CBCT LPD and invertible LPD weights carry their records (50 views): at 20 views inference refuses
    them instead of running the 50-view weights unannounced."""
    for method, name in (("lpd", "model.pt"), ("invertible_lpd", "invertible_lpd.pt")):
        parser = bundle_parser(CBCT, n_views=20, method=method, output_dir=str(tmp_path / method))
        parser.get_parsed_content("initialize")
        with pytest.raises(RuntimeError) as info:
            parser.get_parsed_content("run")
        message = str(_root_cause(info.value))
        assert f"{name} was trained at cone beam" in message and "50 views" in message and "20 views" in message

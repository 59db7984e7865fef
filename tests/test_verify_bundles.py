"""scripts/verify_bundles.py: the Model Zoo's premerge checks, offline, on every bundle.

Every check passes on every bundle except the open items listed here, each with the issue that owns it: the test
fails on any other failure, and also when a listed item starts to pass (take it off the list then).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import verify_bundles  # noqa: E402

BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if p.is_dir())
KNOWN_OPEN: dict[tuple[str, str], str] = {}


def test_every_check_passes_but_the_open_items():
    record = json.loads(verify_bundles.RECORD.read_text())
    failures = {}
    for bundle in BUNDLES:
        for check, problems in verify_bundles.verify(bundle, record, network=False).items():
            if problems:
                failures[(bundle.name, check)] = problems
    assert set(failures) == set(KNOWN_OPEN), {k: v for k, v in failures.items() if k not in KNOWN_OPEN} or set(KNOWN_OPEN) - set(failures)


def _copy(bundle: str, tmp_path: Path) -> Path:
    target = tmp_path / bundle
    shutil.copytree(ROOT / "bundles" / bundle, target, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return target


def test_a_change_without_a_version_bump_is_caught_and_cannot_be_recorded(tmp_path, monkeypatch):
    bundle = _copy("psma_pet_neural_blind_deconvolution", tmp_path)
    record = {bundle.name: {"version": verify_bundles._metadata(bundle)["version"], "sha256": verify_bundles.content_hash(bundle)}}
    assert verify_bundles.check_version_bumped(bundle, record) == []
    readme = bundle / "docs" / "README.md"
    readme.write_text(readme.read_text() + "\nedited\n")
    assert "was not bumped" in verify_bundles.check_version_bumped(bundle, record)[0]
    monkeypatch.setattr(verify_bundles, "RECORD", tmp_path / "record.json")
    with pytest.raises(SystemExit, match="bump the version"):
        verify_bundles.record_versions([bundle], record)


def test_json_layout_version_order_and_file_sizes_are_checked(tmp_path, monkeypatch):
    bundle = _copy("psma_pet_neural_blind_deconvolution", tmp_path)
    config = bundle / "configs" / "paper_scale.json"
    config.write_text(json.dumps(json.loads(config.read_text())))  # one line: not the pre-commit hook's layout
    assert verify_bundles.check_json_format(bundle) == ["configs/paper_scale.json is not formatted as pretty-format-json --indent=4 --no-sort-keys writes it"]
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["changelog"] = {"99.0.0": "a later version than the current one", **meta["changelog"]}
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    assert "is not the newest" in verify_bundles.check_version(bundle)[0]
    monkeypatch.setattr(verify_bundles, "MAX_KB", 1)
    assert any("models/brisque_svr.txt" in p for p in verify_bundles.check_file_sizes(bundle))


def test_eval_metrics_check_compares_the_example_run(tmp_path, monkeypatch):
    """``--run-examples`` compares the metadata's eval_metrics with the example's summary (run stubbed here by a
    summary written as the run would), and refuses metadata without the figure."""
    import subprocess

    bundle = _copy("psma_pet_neural_blind_deconvolution", tmp_path)

    def fake_run(cmd, **kwargs):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        (out / "summary.json").write_text(json.dumps({"mean_psnr_db": 24.0}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(verify_bundles.subprocess, "run", fake_run)
    assert verify_bundles.check_eval_metrics(bundle) == ["eval_metrics psnr_db_example 25.01 but the example measures 24.0"]
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = {"psnr_db_example": 24.0}
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    assert verify_bundles.check_eval_metrics(bundle) == []
    meta["eval_metrics"] = {}
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    assert verify_bundles.check_eval_metrics(bundle) == ["metadata eval_metrics has no psnr_db_example"]


def test_update_eval_metrics_writes_what_the_example_measures(tmp_path, monkeypatch):
    """After a retraining the metadata's eval_metrics are written by ``--update-eval-metrics`` from the example run
    (stubbed), to the digits already written, in the Zoo's JSON format; the check then passes and the version check
    asks for a bump."""
    import subprocess

    bundle = _copy("psma_pet_neural_blind_deconvolution", tmp_path)

    def fake_run(cmd, **kwargs):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        (out / "summary.json").write_text(json.dumps({"mean_psnr_db": 26.1234, "mean_ssim": 0.81234}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(verify_bundles.subprocess, "run", fake_run)
    written = verify_bundles.update_eval_metrics(bundle)
    assert written["psnr_db_example"] == 26.12
    assert verify_bundles.check_eval_metrics(bundle) == [] and verify_bundles.check_json_format(bundle) == []
    record = json.loads(verify_bundles.RECORD.read_text())
    assert verify_bundles.check_version_bumped(bundle, record)

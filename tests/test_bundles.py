"""Every bundle: metadata valid against the MONAI schema, configs parse, and inference runs on its example case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "monai-recon-ext"  # monai_ext's distribution name (pyproject.toml)
SCHEMA = ROOT / "scripts" / "schema" / "meta_schema_20240725.json"  # vendored copy of the official schema
BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if p.is_dir())
OFFICIAL_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


def test_there_are_bundles():
    assert BUNDLES, "no bundle under bundles/"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_layout(bundle):
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/logging.conf", "docs/README.md", "LICENSE", "models"):
        assert (bundle / rel).exists(), f"{bundle.name} lacks {rel}"
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert meta["schema"] == OFFICIAL_SCHEMA_URL
    assert meta["version"] in meta["changelog"], "the changelog must describe the current version"
    assert DISTRIBUTION in meta["required_packages_version"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_verify_metadata_offline(bundle, tmp_path):
    assert SCHEMA.is_file(), f"the vendored schema is missing: {SCHEMA}"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(bundle / "configs/metadata.json"), "--filepath", str(SCHEMA)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in (result.stdout + result.stderr)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_configs_parse(bundle):
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(ROOT / "scripts"))
    from package_bundles import config_files_for  # overrides are parsed on top of the config they extend

    for config in sorted((bundle / "configs").glob("*.json")):
        parser = ConfigParser()
        parser.read_config(config_files_for(config))
        parser.parse()
        if config.name != "metadata.json":
            for key in ("bundle_root", "device"):
                assert key in parser.config, f"{config.name} lacks '{key}'"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_inference_runs_on_builtin_example_from_any_directory(bundle, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(bundle / "configs/inference.json"),
        "--bundle_root", str(bundle),
        "--output_dir", str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"], "no case was reconstructed"
    for case in summary["cases"]:
        nifti = Path(case["file"])
        assert nifti.is_file() and nifti.with_name(nifti.name.replace(".nii.gz", ".png")).is_file()
        import nibabel as nib

        data = np.asarray(nib.load(str(nifti)).dataobj)
        assert np.isfinite(data).all() and data.std() > 0
    assert summary.get("mean_psnr_db", 0) > 20.0, summary
    # the metadata's figures are what this run measures (as the Model Zoo expects of eval_metrics)
    metrics = json.loads((bundle / "configs/metadata.json").read_text())["eval_metrics"]
    assert abs(metrics["psnr_db_example"] - summary["mean_psnr_db"]) <= 0.011, (metrics, summary["mean_psnr_db"])
    if "ssim_example" in metrics:
        assert abs(metrics["ssim_example"] - summary["mean_ssim"]) <= 0.0011, (metrics, summary["mean_ssim"])


def test_bundles_require_the_monai_ext_of_this_checkout():
    """Each bundle's metadata names the monai_ext distribution (monai-recon-ext) and version it was written against:
    this checkout's."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = project["version"]
    import monai_ext

    assert monai_ext.__version__ == version and project["name"] == DISTRIBUTION
    for bundle in BUNDLES:
        meta = json.loads((bundle / "configs" / "metadata.json").read_text())
        assert meta["required_packages_version"][DISTRIBUTION] == version, bundle.name
        assert "monai_ext" not in meta["required_packages_version"], f"{bundle.name}: name the distribution, not the import package"


@pytest.mark.parametrize("name", ["ct_learned_reconstruction", "cbct_learned_primal_dual"])
def test_monai_bundle_load_gives_the_default_network_with_models_model_pt_from_any_directory(name, tmp_path, monkeypatch):
    """``monai.bundle.load`` (Model Zoo, MONAI Label) reads ``models/model.pt`` into ``network_def``; it works from
    a folder other than the bundle's, and the weights are the committed ones."""
    import warnings

    import torch
    from monai.bundle import load

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = load(name, bundle_dir=str(ROOT / "bundles"), device="cpu")
    state = torch.load(ROOT / "bundles" / name / "models" / "model.pt", map_location="cpu", weights_only=True)
    loaded = network.state_dict()
    assert set(state) == set(loaded)
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_docs_follow_the_model_zoo_readme_template(bundle):
    """The sections of the Zoo's docs/readme_template.md, and a statement of which export works."""
    text = (bundle / "docs" / "README.md").read_text()
    headings = [line.strip() for line in text.splitlines() if line.startswith("#")]
    for section in ("### **Authors**", "### **Tags**", "## Model Description", "## Data", "## Performance", "## System Configuration",
                    "## Limitations", "## References", "## License"):
        assert any(h == section or h.startswith(section + " ") for h in headings), f"{bundle.name}: no '{section}' section"
    limitations = text.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    assert "**Export.**" in limitations, f"{bundle.name}: the Limitations section must say which export works"

"""Model Zoo style packaging: checks refuse broken bundles; each zip runs its inference from an empty folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import package_bundles  # noqa: E402

BUNDLES = sorted(p for p in (ROOT / "bundles").iterdir() if p.is_dir())
SCHEMA = package_bundles.DEFAULT_SCHEMA


def _copy(bundle: Path, dst: Path) -> Path:
    target = dst / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return target


def test_refuses_bundle_without_changelog_entry(tmp_path):
    bundle = _copy(BUNDLES[0], tmp_path)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = "9.9.9"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(package_bundles.BundleCheckError, match="changelog has no entry for version '9.9.9'"):
        package_bundles.package_bundle(bundle, tmp_path / "dist", SCHEMA)
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").glob("*.zip"))


def test_refuses_invalid_metadata_and_unparsable_config(tmp_path):
    bundle = _copy(BUNDLES[0], tmp_path)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["network_data_format"]
    meta_path.write_text(json.dumps(meta))
    (bundle / "configs" / "broken.json").write_text("{not json")
    with pytest.raises(package_bundles.BundleCheckError) as err:
        package_bundles.package_bundle(bundle, tmp_path / "dist", SCHEMA)
    assert "network_data_format" in str(err.value) and "broken.json does not parse" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_zip_round_trip_runs_inference(bundle, tmp_path):
    archive = package_bundles.package_bundle(bundle, tmp_path / "dist", SCHEMA)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert archive.name == f"{bundle.name}_v{meta['version']}.zip"
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as z:
        z.extractall(unpacked)
        info = json.loads(z.read(f"{bundle.name}/models/model_info.json"))
    for rel, entry in info["files"].items():
        assert (bundle / rel).stat().st_size == entry["bytes"]
    root = unpacked / bundle.name
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    if "network_def" in parser.config:  # per-volume fits (PSMA deblurring) build their networks per case
        assert parser.get_parsed_content("network_def") is not None  # monai.bundle load of the network definition
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(root / "configs/inference.json"), "--bundle_root", str(root), "--output_dir", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["cases"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_network_in_out_matches_metadata(bundle):
    """``verify_net_in_out`` for every bundle whose network takes the metadata's ``image`` input: all but the dynamic
    PET one, whose network takes the counts with six further tensors (factors, timing, dose) per exam."""
    verified = package_bundles.verify_network(bundle)
    assert verified == (bundle.name != "dynamic_pet_deq_reconstruction"), f"{bundle.name}: verify_net_in_out {'ran' if verified else 'did not run'}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_torch_export_program_reproduces_the_network(bundle, tmp_path):
    """``torch.export`` of every bundle that names ``export_ckpt`` (the CT bundle at least); the reloaded program's
    output is compared with the eager network's inside, and it holds no Python callback."""
    program = package_bundles.export_program(bundle, tmp_path)
    if bundle.name == "ct_learned_reconstruction":
        assert program is not None and program.stat().st_size > 0
    if program is not None:
        import torch

        graph = torch.export.load(str(program)).graph
        targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
        assert not any("numba" in t or "PythonOp" in t for t in targets), targets


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_torchscript_export_reproduces_the_network(bundle, tmp_path):
    """``ckpt_export`` (traced) of every bundle that names ``export_ckpt``; the export's output is compared inside."""
    exported = package_bundles.export_network(bundle, tmp_path)
    if bundle.name == "ct_learned_reconstruction":
        assert exported is not None and exported.stat().st_size > 0
    if exported is not None:
        import torch

        module = torch.jit.load(str(exported))
        assert not any("PythonOp" in str(node.kind()) for node in module.inlined_graph.nodes()), "a Python op was traced"


def test_export_refuses_a_network_that_differs(tmp_path, monkeypatch):
    """The export check compares outputs: an export whose output is off is refused."""
    import torch

    load = torch.jit.load

    class _Off(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x) + 1e-3

    monkeypatch.setattr(torch.jit, "load", lambda path: _Off(load(path)))
    bundle = next(b for b in BUNDLES if b.name == "ct_learned_reconstruction")
    with pytest.raises(package_bundles.BundleCheckError, match="differs"):
        package_bundles.export_network(bundle, tmp_path)


def test_zips_are_byte_reproducible_with_ordinary_permissions(tmp_path):
    bundle = _copy(BUNDLES[0], tmp_path / "src")
    first = package_bundles.package_bundle(bundle, tmp_path / "a", SCHEMA)
    for path in bundle.rglob("*"):  # touching the files must not change the archive
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = package_bundles.package_bundle(bundle, tmp_path / "b", SCHEMA)
    assert first.read_bytes() == second.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(first.stat().st_mode) == 0o666 & ~umask
    with zipfile.ZipFile(first) as z:
        assert {(i.external_attr >> 16) & 0o777 for i in z.infolist()} == {0o644}


def test_pyproject_declares_every_third_party_package_monai_ext_imports():
    import ast
    import re
    import tomllib

    dist_of = {"skimage": "scikit-image", "ignite": "pytorch-ignite", "yaml": "pyyaml"}
    declared = {
        re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    imported = set()
    for path in (ROOT / "monai_ext").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in ("monai_ext", "__future__")}
    assert third_party >= {"torch", "numba", "pydicom"}  # the scan sees the package's imports
    missing = sorted(dist_of.get(name, name) for name in third_party if dist_of.get(name, name).lower() not in declared)
    assert not missing, f"pyproject.toml [project] dependencies lack {missing}"


@pytest.mark.slow
def test_wheel_of_monai_ext_names_the_distribution_the_bundles_require(tmp_path):
    """package_bundles.py builds the wheel offline; its metadata gives the distribution name and version that every
    bundle's required_packages_version names, the runtime dependencies of pyproject.toml, and the package files."""
    import tomllib
    import zipfile as zf

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wheel = package_bundles.build_wheel(tmp_path)
    assert wheel.name.startswith(f"monai_recon_ext-{project['version']}-py3-none-any")
    with zf.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Name: {project['name']}" in meta and f"Version: {project['version']}" in meta
    for requirement in project["dependencies"]:
        assert f"Requires-Dist: {requirement}" in meta, requirement
    assert "monai_ext/__init__.py" in names and "monai_ext/tomo/adaptation.py" in names
    assert not any(n.startswith(("tests/", "bundles/", "scripts/")) for n in names)
    for bundle in sorted((ROOT / "bundles").iterdir()):
        required = json.loads((bundle / "configs" / "metadata.json").read_text())["required_packages_version"]
        assert required[project["name"]] == project["version"], bundle.name


@pytest.mark.slow
def test_zips_run_on_a_machine_with_only_torch_monai_and_the_wheel(tmp_path):
    """The distribution round trip: a fresh virtual environment gets torch (by its pin), then the monai_ext wheel
    (which pulls MONAI and the other dependencies pyproject.toml declares; pip must reach an index), and nothing of
    this checkout. Each bundle zip, unzipped into an empty folder, runs its inference there and reproduces the
    repository's eval_metrics."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    wheel = package_bundles.build_wheel(tmp_path / "dist")
    for args in (["torch==2.13.0"], [str(wheel)]):
        result = subprocess.run(pip + args, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 0, f"pip install {args} failed (it needs a package index):\n{result.stderr[-3000:]}"
    installed = subprocess.run([python, "-c", "import monai_ext, monai; print(monai_ext.__file__, monai.__version__)"],
                               capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(venv) in installed and str(ROOT) not in installed, installed
    for bundle in BUNDLES:
        archive = package_bundles.package_bundle(bundle, tmp_path / "dist", SCHEMA)
        machine = tmp_path / "machine" / bundle.name
        with zipfile.ZipFile(archive) as z:
            z.extractall(machine)
        root, out = machine / bundle.name, machine / "out"
        cmd = [python, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"), "--bundle_root", str(root),
               "--output_dir", str(out)]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=machine, env={**env, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=1200)
        assert result.returncode == 0, f"{bundle.name}: {result.stderr[-3000:]}"
        measured = json.loads((out / "summary.json").read_text())["mean_psnr_db"]
        expected = json.loads((bundle / "configs" / "metadata.json").read_text())["eval_metrics"]["psnr_db_example"]
        assert abs(measured - expected) <= 0.011, (bundle.name, measured, expected)

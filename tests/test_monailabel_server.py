"""MONAI Label: the app in scripts/monailabel_app serves the bundles' inference from a real server.

The server runs in its own environment (.venv-monailabel, created here by scripts/setup_monailabel_env.sh when it
is missing or outdated; pip must reach an index then). A studies folder holds a CT case (an attenuation image on
the CT bundle's grid), its sinogram with a geometry sidecar (measured data) and a PET volume (the PSMA bundle's built-in Q3P-like sphere phantom); the test calls
``/infer/<bundle>`` for the CT reconstruction and the PSMA deblurring and checks the returned NIfTI images.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "scripts" / "monailabel_app"
SETUP = ROOT / "scripts" / "setup_monailabel_env.sh"
VENV = ROOT / ".venv-monailabel"
CT_BUNDLE = ROOT / "bundles" / "ct_learned_reconstruction"
PSMA_BUNDLE = ROOT / "bundles" / "psma_pet_neural_blind_deconvolution"
CT_ID, CT_SCAN_ID, PET_ID = "ct_case", "ct_scan", "pet_spheres"
START_TIMEOUT_S, INFER_TIMEOUT_S = 300, 600


def _load_app_module(name: str):
    """A module of the app's ``lib`` package that does not import monailabel (so it runs in the main env)."""
    spec = importlib.util.spec_from_file_location(f"monailabel_app_{name}", APP / "lib" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_overridable_options_leave_out_paths_and_expressions():
    bundles = _load_app_module("bundles")
    config = {"method": "lpd", "n_views": 5, "i0": 1e4, "noise_free": False, "weights_dir": "/models",
              "dataset_dir": "", "device": "cpu", "network": "$@net.to(@device)", "ref": "@method",
              "image_shape": [64, 64], "plan_file": "x.json"}
    assert bundles.overridable_options(config) == {"method": "lpd", "n_views": 5, "i0": 1e4, "noise_free": False}


def _servable_bundles() -> list[str]:
    """Bundle folders with both configs whose inference config takes an input (dataset_dir or input_path), less
    those whose metadata says MONAI Label cannot serve them (``"monailabel": {"served": false, "why": ...}``)."""
    names = []
    for path in sorted((ROOT / "bundles").iterdir()):
        inference, meta = path / "configs" / "inference.json", path / "configs" / "metadata.json"
        if inference.is_file() and meta.is_file() and {"dataset_dir", "input_path"} & set(json.loads(inference.read_text())):
            if json.loads(meta.read_text()).get("monailabel", {}).get("served", True):
                names.append(path.name)
    return names


def test_discover_bundles_serves_every_complete_bundle(tmp_path):
    bundles = _load_app_module("bundles")
    found = bundles.discover_bundles(ROOT / "bundles")
    assert [b.name for b in found] == _servable_bundles()
    # every bundle of the repository is served (each inference.json takes an input), but the dynamic PET one, whose
    # exam folders a datastore of image files cannot hold: its metadata says so, and asking for it names why
    every = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())
    assert [b.name for b in found] == [n for n in every if n != "dynamic_pet_deq_reconstruction"]
    with pytest.raises(ValueError, match="not served by MONAI Label: its input is an exam folder"):
        bundles.discover_bundles(ROOT / "bundles", ["dynamic_pet_deq_reconstruction"])
    ct = next(b for b in found if b.name == CT_BUNDLE.name)
    assert ct.version == json.loads((CT_BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert ct.input_id == "dataset_dir"
    assert "method" in ct.options and "dataset_dir" not in ct.options
    # folders still being written (no metadata, no input) are skipped, unless asked for by name
    for name, files in {"no_metadata": ["inference"], "no_input": ["inference", "metadata"]}.items():
        (tmp_path / name / "configs").mkdir(parents=True)
        for f in files:
            (tmp_path / name / "configs" / f"{f}.json").write_text("{}")
    with pytest.raises(ValueError, match="no servable bundle"):
        bundles.discover_bundles(tmp_path)
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        bundles.discover_bundles(tmp_path, ["no_metadata"])
    with pytest.raises(ValueError, match="takes no input"):
        bundles.discover_bundles(tmp_path, ["no_input"])
    with pytest.raises(FileNotFoundError, match="not found"):
        bundles.discover_bundles(tmp_path, ["absent"])


# ---------------------------------------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def monailabel_env():
    """The MONAI Label environment, created or updated by the setup script (a no-op when it is up to date)."""
    start = time.perf_counter()
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"{SETUP.relative_to(ROOT)} failed (exit {result.returncode}); creating {VENV.name} needs pip to "
                    f"reach a package index.\n{(result.stdout + result.stderr)[-3000:]}")
    print(f"MONAI Label environment ready in {time.perf_counter() - start:.0f} s")
    return VENV


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A local datastore: a CT attenuation image on the CT bundle's grid and a 3D PET volume."""
    from monai.bundle import ConfigParser

    from monai_ext.data import ellipse_images
    from monai_ext.io import save_nifti
    from monai_ext.phantoms.spheres import sphere_phantom

    folder = tmp_path_factory.mktemp("studies")
    parser = ConfigParser()
    parser.read_config(str(CT_BUNDLE / "configs" / "inference.json"))
    shape, pixel = tuple(parser["image_shape"]), float(parser["pixel_size"])
    ct = ellipse_images(1, shape, pixel, seed=11)[0, 0].numpy()
    save_nifti(ct, folder / f"{CT_ID}.nii.gz", spacing=(pixel, pixel))
    # a measured-data study: the CT bundle's noise-free sinogram of the same image, NIfTI with its geometry sidecar
    from monai_ext.io import save_projections
    from monai_ext.tomo import projector_for

    geometry = parser.get_parsed_content("geometry")
    sinogram = projector_for(geometry)(torch.from_numpy(ct)[None, None])[0, 0]
    save_projections(sinogram, geometry, folder / f"{CT_SCAN_ID}.nii.gz")
    # the PSMA bundle's built-in example when the bundle is there (sized for a quick run), else the default phantom
    if (PSMA_BUNDLE / "configs" / "inference.json").is_file():
        parser = ConfigParser()
        parser.read_config(str(PSMA_BUNDLE / "configs" / "inference.json"))
        pet = parser.get_parsed_content("example")
    else:
        pet = sphere_phantom(seed=0)
    save_nifti(pet.measured, folder / f"{PET_ID}.nii.gz", affine=pet.affine)
    return {"folder": folder, "ct": ct, "ct_spacing": pixel, "pet": pet}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL if it has not exited within 30 s."""
    pgid = process.pid  # started in its own session: the group id is the server's pid
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:  # children of the server, if any, leave the group too
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(monailabel_env, studies, tmp_path_factory):
    """``monailabel start_server`` on 127.0.0.1 and a free port; yields the base URL, stops it by its PID."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("monailabel_logs") / "server.log"
    env = {
        **os.environ,
        "PATH": f"{monailabel_env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(monailabel_env),
        "MONAILABEL_PYEXE": str(monailabel_env / "bin" / "python"),
        # no session store under ~/.cache, no file watcher on the studies folder
        "MONAI_LABEL_SESSIONS": "false",
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
        "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
    }
    cmd = [str(monailabel_env / "bin" / "monailabel"), "start_server", "--app", str(APP),
           "--studies", str(studies["folder"]), "--host", "127.0.0.1", "--port", str(port)]
    log = open(log_path, "w")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        log.flush()
        return log_path.read_text()[-4000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        info = None
        while info is None:
            if process.poll() is not None:
                pytest.fail(f"the MONAI Label server exited with code {process.returncode}:\n{log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no answer from {url}/info/ within {START_TIMEOUT_S} s:\n{log_tail()}")
            try:
                info = _get_json(f"{url}/info/")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1.0)
        yield {"url": url, "info": info, "log_tail": log_tail}
    finally:
        _stop(process)
        log.close()
        with pytest.raises(ProcessLookupError):  # nothing of the server's process group is left
            os.killpg(process.pid, 0)


def _split_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Parts of a ``multipart/form-data`` body by name: ``(filename, content)``."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    parts = {}
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(line for line in head.decode().split("\r\n") if line.lower().startswith("content-disposition"))
        fields = dict(f.strip().split("=", 1) for f in disposition.split(";")[1:])
        parts[fields["name"].strip('"')] = (fields.get("filename", "").strip('"') or None, content)
    return parts


def _infer(server, model: str, image: str, tmp_path: Path, params: dict | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``POST /infer/<model>?image=<id>`` (with ``params`` as the multipart field MONAI Label reads, like
    ``curl -F 'params={...}'``); returns the image (array order, as ``monai_ext.io.load_nifti``), its affine and the
    result JSON."""
    from monai_ext.io import load_nifti

    data, headers = b"", {}
    if params:
        boundary = "monai-recon-bundles-test"
        data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
                f"--{boundary}--\r\n").encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    request = urllib.request.Request(f"{server['url']}/infer/{model}?image={image}", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=INFER_TIMEOUT_S) as response:
            body, content_type = response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        pytest.fail(f"/infer/{model} failed with HTTP {err.code}: {err.read()[:500]!r}\n{server['log_tail']()}")
    assert content_type.startswith("multipart/form-data"), content_type
    parts = _split_multipart(body, content_type)
    result = json.loads(parts["params"][1])
    filename, content = parts["image"]
    assert filename.endswith((".nii", ".nii.gz")), filename
    path = tmp_path / filename
    path.write_bytes(content)
    image_array, affine = load_nifti(path)
    return image_array, affine, result


@pytest.mark.slow
def test_server_lists_every_bundle_as_an_others_model(server):
    models = server["info"]["models"]
    assert sorted(models) == _servable_bundles()
    for name, model in models.items():
        assert model["type"] == "others", name
        assert model["labels"] == [], name
    assert models[CT_BUNDLE.name]["config"]["method"]  # the bundle's options are offered to clients
    assert "dataset_dir" not in models[CT_BUNDLE.name]["config"]
    assert server["info"]["datastore"]["total"] == 3  # the sinogram's JSON sidecar is not a study


@pytest.mark.slow
def test_ct_reconstruction_over_http(server, studies, tmp_path):
    from monai_ext.metrics import psnr

    image, affine, result = _infer(server, CT_BUNDLE.name, CT_ID, tmp_path)
    reference = studies["ct"]
    assert image.shape == reference.shape  # the bundle's grid (64 x 64): the input is an image on it
    assert np.allclose(np.abs(np.diag(affine)[:2]), studies["ct_spacing"])
    assert np.all(np.isfinite(image))
    # a reconstruction of the attenuation image the bundle scanned: same range, close to it
    assert 0.5 * reference.max() < image.max() < 1.5 * reference.max()
    assert psnr(image, reference) > 20.0
    assert result["bundle"] == CT_BUNDLE.name and result["shape"] == list(image.shape[::-1])
    assert result["case"]["name"] == CT_ID and result["case"]["psnr_db"] > 20.0


@pytest.mark.slow
def test_ct_measured_sinogram_study_over_http(server, studies, tmp_path):
    """A study that is a sinogram (NIfTI) with its geometry sidecar beside it: the app hands both to the bundle,
    which reconstructs the measured data (FBP here) and says so."""
    from monai_ext.metrics import psnr

    image, affine, result = _infer(server, CT_BUNDLE.name, CT_SCAN_ID, tmp_path, params={"method": "fbp"})
    reference = studies["ct"]
    assert image.shape == reference.shape and np.all(np.isfinite(image))
    assert np.allclose(np.abs(np.diag(affine)[:2]), studies["ct_spacing"])
    assert result["case"]["reconstructed_from"] == "measured projections", result["case"]
    assert psnr(image, reference) > 12.0  # 5-view FBP of the noise-free sinogram of this image


@pytest.mark.slow
def test_psma_deblurring_over_http(server, studies, tmp_path):
    if not PSMA_BUNDLE.is_dir():
        pytest.skip(f"bundle {PSMA_BUNDLE.name} does not exist yet (bundles/{PSMA_BUNDLE.name} is missing)")
    from monai_ext.deconvolution.blind_deconvolution import supersampled_affine

    pet = studies["pet"]
    # a top-level option of the bundle's inference.json, overridden over HTTP: 40 % of the quick scale's steps
    image, affine, result = _infer(server, PSMA_BUNDLE.name, PET_ID, tmp_path, params={"steps_scale": 0.4})
    assert image.shape == tuple(2 * s for s in pet.measured.shape)
    assert np.allclose(np.abs(np.diag(affine)[:3]), np.asarray(pet.spacing[::-1]) / 2)
    assert np.allclose(affine, supersampled_affine(pet.affine), atol=1e-4)
    assert np.all(np.isfinite(image))
    # deblurring keeps the activity and sharpens the spheres: mean within 15 %, peak above the blurred one
    assert abs(image.mean() - pet.measured.mean()) < 0.15 * pet.measured.mean()
    assert 0.9 * pet.measured.max() < image.max() < 4.0 * pet.sphere_activity
    assert image.min() > -0.1 * pet.sphere_activity
    assert result["bundle"] == PSMA_BUNDLE.name and result["shape"] == list(image.shape[::-1])
    assert result["overrides"] == {"steps_scale": 0.4}, result.get("overrides")

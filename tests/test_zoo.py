"""scar_seg through MONAI's model-zoo tools: trained, packed, downloaded, then checked, exported and loaded.

A tiny scar_seg (conftest's 2D width-8 plan, 2 iterations) is trained in this process with
``models_dir`` on a copy of the bundle, so the end of training writes ``models/model.pt`` and
``models/plan.json`` there; ``lgesynth pack`` zips it; ``python -m monai.bundle download --url`` fetches
it from a localhost server into an empty folder; in that folder the ``verify_net_in_out`` and
``ckpt_export`` command lines of the bundle's docs run as typed there (relative paths);
``monai.bundle.load`` returns the weights, the network and the TorchScript module, all computing what
the training run's own network computes; and the downloaded bundle's inference segments a volume
exactly as the training run's checkpoint does.

The MONAI commands run in this process (MONAI's ``__main__``, the same argv) by default; the ``slow``
variant runs each in a fresh process with only the installed package on the path (+15-30 s each here).
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import SCAR_SEG_CONFIGS, monai_bundle_cli, run_bundle, serve_folder, tiny_seg_plan, write_tiny_datalist
from lgesynth.errors import DataError
from lgesynth.pack import pack_bundle
from lgesynth.seg.data import slice_last_plan
from lgesynth.seg.network import build_dynunet
from lgesynth.seg.plan import load_plan

pytestmark = pytest.mark.usefixtures("one_thread")
VERSION = json.loads((SCAR_SEG_CONFIGS / "metadata.json").read_text())["version"]
PATCH = [32, 32]  # conftest's 2D plan: whole 32 x 32 slices
DOCS = SCAR_SEG_CONFIGS.parent / "docs" / "README.md"


def documented(command: str) -> list[str]:
    """The arguments of ``python -m monai.bundle <command> ...`` as the docs' "Share it" section writes it."""
    section = DOCS.read_text().split("\n## Share it\n", 1)[1].split("\n## ", 1)[0]
    lines = section.replace("\\\n", " ").splitlines()
    found = [shlex.split(line)[4:] for line in lines if line.startswith(f"python -m monai.bundle {command} ")]
    assert len(found) == 1, f"{DOCS}: one {command} command expected in Share it, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train into a copy of the bundle (``models_dir``) and pack it."""
    root = tmp_path_factory.mktemp("zoo")
    datalist = write_tiny_datalist(root / "data", n_cases=3)  # 2 training, 1 test
    bundle = root / "src" / "scar_seg"
    shutil.copytree(SCAR_SEG_CONFIGS, bundle / "configs")
    shutil.copytree(SCAR_SEG_CONFIGS.parent / "docs", bundle / "docs")
    train = root / "train"
    run_bundle(bundle / "configs", "train.yaml", datalist=str(datalist), output_dir=str(train), models_dir=str(bundle / "models"),
               plan_path=str(tiny_seg_plan(root / "plan.json", epochs=1, iterations_per_epoch=2)), val_fraction=0.0,
               num_workers=0, log_every=100)
    test_image = Path(datalist.parent / json.loads(datalist.read_text())["test"][0]["image"])
    return {"root": root, "bundle": bundle, "train": train, "zip": pack_bundle(bundle, root / "dist"), "test_image": test_image}


@pytest.fixture(scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)],
                ids=["this_process", "fresh_processes"])
def zoo(trained, request):
    """The zip served on localhost and downloaded into an empty folder with MONAI's command line."""
    downloaded = trained["root"] / ("downloaded_fresh" if request.param else "downloaded")
    downloaded.mkdir()
    with serve_folder(trained["zip"].parent) as base:
        monai_bundle_cli("download", "--name", "scar_seg", "--url", f"{base}/{trained['zip'].name}", "--bundle_dir",
                         downloaded, cwd=trained["root"], fresh_process=request.param)
    return {**trained, "downloaded": downloaded / "scar_seg", "fresh_process": request.param}


def _trained_network(zoo) -> torch.nn.Module:
    """The training run's own network: its plan + the model of its final (resumable) checkpoint."""
    net = build_dynunet(slice_last_plan(load_plan(zoo["train"] / "plan.json")))
    net.load_state_dict(torch.load(zoo["train"] / "models" / "model_final.pt", weights_only=True)["model"])
    return net.eval()


def test_zip_ships_the_weights_the_plan_and_the_plans_patch(trained):
    assert trained["zip"].name == f"scar_seg_v{VERSION}.zip"
    zf = zipfile.ZipFile(trained["zip"])
    configs = {f"scar_seg/configs/{p.name}" for p in SCAR_SEG_CONFIGS.iterdir() if p.is_file()}
    docs = {f"scar_seg/docs/{p.name}" for p in (SCAR_SEG_CONFIGS.parent / "docs").iterdir() if p.is_file()}
    assert "scar_seg/docs/README.md" in docs
    assert set(zf.namelist()) == configs | docs | {"scar_seg/models/model.pt", "scar_seg/models/plan.json"}
    # model.pt: the final weights alone, as MONAI's zoo ships them (no optimiser, no "model" key)
    shipped = torch.load(io.BytesIO(zf.read("scar_seg/models/model.pt")), weights_only=True)
    final = torch.load(trained["train"] / "models" / "model_final.pt", weights_only=True)
    assert set(final) >= {"model", "optimizer", "trainer"} and list(shipped) == list(final["model"])
    assert all(torch.equal(shipped[k], final["model"][k]) for k in shipped)
    assert json.loads(zf.read("scar_seg/models/plan.json")) == slice_last_plan(load_plan(trained["train"] / "plan.json"))
    # the packed metadata states the shipped plan's patch; the repository's keeps its example
    meta = json.loads(zf.read("scar_seg/configs/metadata.json"))
    repo_meta = json.loads((SCAR_SEG_CONFIGS / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == fmt["outputs"]["pred"]["spatial_shape"] == PATCH
    assert repo_meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [96, 96, 8]
    assert {k: v for k, v in meta.items() if k != "network_data_format"} == \
        {k: v for k, v in repo_meta.items() if k != "network_data_format"}
    assert pack_bundle(trained["bundle"], trained["root"] / "again").read_bytes() == trained["zip"].read_bytes()


def test_pack_refuses_a_scar_seg_bundle_without_its_plan(trained, tmp_path):
    bundle = tmp_path / "scar_seg"
    shutil.copytree(trained["bundle"], bundle)
    (bundle / "models" / "plan.json").unlink()
    with pytest.raises(DataError, match="not found: train the bundle with --models_dir") as err:
        pack_bundle(bundle, tmp_path / "dist")
    assert str(bundle / "models" / "plan.json") in str(err.value)


def test_downloaded_bundle_verifies_exports_and_loads_as_the_trained_network(zoo, tmp_path):
    """The two checks of the docs' Share it section, as written there, in the downloaded folder; then load."""
    import monai.bundle

    bundle = zoo["downloaded"]
    fresh = zoo["fresh_process"]
    verify = documented("verify_net_in_out")
    assert verify == ["network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml"]
    monai_bundle_cli("verify_net_in_out", *verify, cwd=bundle, fresh_process=fresh)
    # what it checks: the repository's example patch (3D, 96 x 96 x 8) does not fit this 2D network
    with pytest.raises(RuntimeError, match=r"input to conv2d, but got input of size: \[1, 1, 96, 96, 8\]"):
        monai.bundle.verify_net_in_out("network_def", meta_file=str(SCAR_SEG_CONFIGS / "metadata.json"),
                                       config_file=str(bundle / "configs" / "inference.yaml"), device="cpu",
                                       bundle_root=str(bundle))
    export = documented("ckpt_export")
    assert export[export.index("--filepath") + 1] == "models/model.ts" and "--input_shape" not in export
    monai_bundle_cli("ckpt_export", *export, cwd=bundle, fresh_process=fresh)
    repacked = pack_bundle(bundle, tmp_path / "dist")
    assert "scar_seg/models/model.ts" in zipfile.ZipFile(repacked).namelist()

    weights = monai.bundle.load("scar_seg", bundle_dir=str(bundle.parent), source="github", device="cpu")
    parser = monai.bundle.ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(bundle)
    net = monai.bundle.load("scar_seg", bundle_dir=str(bundle.parent), source="github", device="cpu",
                            model=parser.get_parsed_content("network_def")).eval()
    ts, ts_meta, _ = monai.bundle.load("scar_seg", bundle_dir=str(bundle.parent), source="github", device="cpu",
                                       load_ts_module=True)
    assert ts_meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == PATCH
    assert isinstance(weights, dict) and list(weights) == list(net.state_dict())

    trained = _trained_network(zoo)
    x = torch.randn(2, 1, *PATCH, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = trained(x)
        assert want.shape == (2, 3, *PATCH)
        torch.testing.assert_close(net(x), want, rtol=0, atol=0)
        torch.testing.assert_close(ts(x), want, rtol=1e-5, atol=1e-5)
        y = torch.randn(1, 1, 48, 40, generator=torch.Generator().manual_seed(1))  # traced, yet any multiple of the strides
        torch.testing.assert_close(ts(y), trained(y), rtol=1e-5, atol=1e-5)


def test_downloaded_bundle_segments_a_volume_as_the_training_run_does(zoo, tmp_path):
    bundle, image = zoo["downloaded"], zoo["test_image"]
    run_bundle(bundle / "configs", "inference.yaml", bundle_root=str(bundle), input=str(image),
               output_dir=str(tmp_path / "shipped"))
    run_bundle(SCAR_SEG_CONFIGS, "inference.yaml", input=str(image), output_dir=str(tmp_path / "trained"),
               plan_path=str(zoo["train"] / "plan.json"), ckpt_path=str(zoo["train"] / "models" / "model_final.pt"))
    name = image.name.replace(".nii.gz", "_seg.nii.gz")
    shipped, trained = (nib.load(str(tmp_path / run / name)) for run in ("shipped", "trained"))
    assert shipped.shape == nib.load(str(image)).shape == (32, 32, 6)
    np.testing.assert_array_equal(np.asarray(shipped.dataobj), np.asarray(trained.dataobj))
    labels = np.unique(np.asarray(shipped.dataobj))
    assert set(labels) <= {0, 1, 2} and len(labels) > 1  # not a constant map: the equality says something

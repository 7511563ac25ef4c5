"""The four bundle skeletons: metadata valid against MONAI's schema (offline), versions, logging.

MONAI's ``verify_metadata`` downloads the schema named in ``metadata["schema"]`` unless a file is
already at ``filepath``; we put our vendored copy (``lgesynth/schemas/``) there and forbid sockets,
so the check never touches the network. The schema's SHA-256 is pinned: upstream never edits a
dated schema, so neither do we.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# pipeline order: a bundle may only depend on bundles before it
BUNDLES = ("inr_fit", "inr2vec", "edm_synth", "scar_seg")
SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"
VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _meta_path(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs" / "metadata.json"


def _meta(bundle: str) -> dict:
    return json.loads(_meta_path(bundle).read_text())


def _semver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def schema_file(tmp_path) -> Path:
    """A copy of the vendored schema where verify_metadata will look before downloading."""
    target = tmp_path / SCHEMA_NAME
    with resources.as_file(resources.files("lgesynth") / "schemas" / SCHEMA_NAME) as src:
        shutil.copyfile(src, target)
    return target


def _verify(meta_file: Path, schema_file: Path) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(meta_file), filepath=str(schema_file), hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_vendored_schema_is_the_one_the_bundles_name():
    data = (resources.files("lgesynth") / "schemas" / SCHEMA_NAME).read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, "vendored schema differs from upstream; do not edit it"
    for bundle in BUNDLES:
        assert _meta(bundle)["schema"].rsplit("/", 1)[-1] == SCHEMA_NAME, bundle


@pytest.mark.parametrize("bundle", BUNDLES)
def test_skeleton_files_present(bundle):
    root = REPO / "bundles" / bundle
    for rel in ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "models/.gitkeep"):
        assert (root / rel).is_file(), f"{bundle}: missing {rel}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_offline(bundle, schema_file, no_network):
    _verify(_meta_path(bundle), schema_file)


@pytest.mark.parametrize(
    "defect, message",
    [
        ("missing required key", "'required_packages_version' is a required property"),
        ("tensor without num_channels", "'num_channels' is a required property"),
        ("version not a string", "0.1 is not of type 'string'"),
        ("<name>_data_format without outputs", "'outputs' is a required property"),
    ],
)
def test_bad_metadata_is_rejected(defect, message, tmp_path, schema_file, no_network):
    meta = copy.deepcopy(_meta("scar_seg"))
    if defect == "missing required key":
        del meta["required_packages_version"]
    elif defect == "tensor without num_channels":
        del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    elif defect == "version not a string":
        meta["version"] = 0.1
    else:  # extra networks' formats (e.g. decoder_data_format) are checked like network_data_format
        meta["decoder_data_format"] = {"inputs": {}}
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(message)):
        _verify(bad, schema_file)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_version_is_latest_changelog_entry(bundle):
    meta = _meta(bundle)
    assert VERSION.match(meta["version"]), meta["version"]
    assert meta["changelog"], f"{bundle}: empty changelog"
    assert all(VERSION.match(v) for v in meta["changelog"]), meta["changelog"]
    assert meta["version"] == max(meta["changelog"], key=_semver)
    # model-zoo convention: newest entry first
    assert next(iter(meta["changelog"])) == meta["version"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_versions_recorded(bundle):
    meta = _meta(bundle)
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert VERSION.match(meta.get(key, "")), f"{bundle}: {key}={meta.get(key)!r}"
    assert meta["required_packages_version"].get("lgesynth"), f"{bundle}: configs import lgesynth"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_monai_keeps_required_packages(bundle):
    """MONAI renames a deprecated ``optional_packages_version`` to ``required_packages_version``
    when it reads metadata, overwriting the latter; so the packages must survive ``read_meta``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_meta(str(_meta_path(bundle)))
    assert parser["_meta_::required_packages_version"] == _meta(bundle)["required_packages_version"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_dependencies_point_upstream(bundle):
    deps = _meta(bundle)["bundle_dependencies"]
    for name, dep in deps.items():
        assert name in BUNDLES[: BUNDLES.index(bundle)], f"{bundle} depends on {name}: not upstream of it"
        assert _semver(dep["min_version"]) <= _semver(_meta(name)["version"]), (bundle, name)
        assert dep["artefacts"], (bundle, name)
    if bundle != "inr_fit":
        assert deps, f"{bundle}: every bundle after inr_fit reads another's outputs"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_logging_conf_parses(bundle):
    """fileConfig replaces the process's handlers (pytest's too), so it runs in a child process."""
    conf = REPO / "bundles" / bundle / "configs" / "logging.conf"
    code = (
        "import logging, logging.config, sys\n"
        "logging.config.fileConfig(sys.argv[1])\n"
        "logging.getLogger('probe').info('hello')\n"
        "logging.getLogger('probe').debug('hidden')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.search(r" - probe - INFO - hello$", out.stdout, re.M), out.stdout
    assert "hidden" not in out.stdout

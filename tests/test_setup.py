"""Set-up contract: README's test command is what CI runs; CLI and I/O basics behave."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lgesynth.data.datalist import load_datalist, stratified_split, write_datalist
from lgesynth.errors import DataError
from lgesynth.io import atomic_path, load_nifti, save_nifti

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The fenced shell commands of the README's "Set-up" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "torch==2.13.0" in commands[0] and "torch==2.13.0" in commands[1], "installs must pin the local CPU wheel"
    ci = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd "))]
    assert ci == [commands[1]]


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lgesynth.cli", "--help"], capture_output=True, text=True, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for command in ("phantom", "import_emidec", "check_data", "stats"):
        assert command in out.stdout + out.stderr


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_nifti_round_trip_is_byte_deterministic(tmp_path):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    save_nifti(a, data, affine)
    save_nifti(b, data, affine)
    assert a.read_bytes() == b.read_bytes()
    back, back_affine = load_nifti(a)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(back_affine, affine)


def test_corrupt_nifti_names_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="broken.nii.gz"):
        load_nifti(bad)


def test_datalist_round_trip_relative_paths(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    entries = [{"id": f"s{i}", "image": str(tmp_path / "imagesTr" / f"s{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")} for i in range(3)]
    path = write_datalist(tmp_path / "datalist.json", entries[:2], entries[2:])
    text = path.read_text()
    assert str(tmp_path) not in text  # stored relative to the file
    back = load_datalist(path)
    assert [e["image"] for e in back] == [e["image"] for e in entries]
    assert [e["section"] for e in back] == ["training", "training", "test"]


def test_stratified_split_keeps_both_strata_in_both_parts():
    ids = [f"s{i}" for i in range(20)]
    has_scar = [i % 4 != 0 for i in range(20)]  # 15 scar, 5 none
    train, test = stratified_split(ids, has_scar, 0.2, seed=3)
    assert len(test) == 4 and set(train) | set(test) == set(ids)
    scar = dict(zip(ids, has_scar))
    assert any(scar[i] for i in test) and any(not scar[i] for i in test)
    assert stratified_split(ids, has_scar, 0.2, seed=3) == (train, test)

"""The ``lgesynth`` command line as a user runs it: exit codes and messages on good and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from conftest import write_tiny_datalist
from lgesynth.io import load_nifti, save_nifti


def lgesynth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lgesynth.cli", *args], capture_output=True, text=True, timeout=120)


def test_check_data_exits_0_on_good_pairs_and_1_naming_the_bad_file(tmp_path):
    datalist = write_tiny_datalist(tmp_path / "data", n_cases=3)
    good = lgesynth("check-data", str(datalist))
    assert good.returncode == 0, good.stderr
    assert "all pairs OK" in good.stdout
    bad_label = tmp_path / "data" / "labelsTr" / "p002.nii.gz"
    label, affine = load_nifti(bad_label)
    label = np.asarray(label).copy()
    label[0, 0, 0] = 5
    save_nifti(bad_label, label, affine, dtype=np.uint8)
    bad = lgesynth("check-data", str(datalist))
    assert bad.returncode == 1
    assert "p002.nii.gz" in bad.stdout and "label values" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_a_data_error_is_one_line_with_exit_2(tmp_path):
    missing = tmp_path / "nowhere" / "datalist.json"
    out = lgesynth("stats", str(missing))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("lgesynth: error:") and str(missing) in out.stderr
    assert "Traceback" not in out.stderr

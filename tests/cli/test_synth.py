"""``kidneyssl synth`` end to end: writes a KiTS19-layout dataset, refuses to overwrite without --force."""

from __future__ import annotations

import nibabel as nib
import pytest

from kidneyssl.cli.main import main


def test_synth_writes_dataset_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert main(["synth", "--out", str(out), "--cases", "2", "--seed", "3"]) == 0
    assert "wrote 2 demo phantom cases" in capsys.readouterr().out
    for case in ("case_00000", "case_00001"):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            image = nib.load(out / case / name)
            assert nib.aff2axcodes(image.affine) == ("I", "P", "L")
    assert main(["synth", "--out", str(out), "--cases", "2", "--seed", "4"]) == 2
    assert "--force" in capsys.readouterr().err
    before = (out / "case_00000" / "imaging.nii.gz").read_bytes()
    assert main(["synth", "--out", str(out), "--cases", "1", "--seed", "4", "--force", "--quiet"]) == 0
    assert (out / "case_00000" / "imaging.nii.gz").read_bytes() != before
    assert not (out / "case_00001").exists()


@pytest.mark.parametrize("data_format", ["kits23", "nnunet", "pairs"])
def test_synth_formats_pass_check(tmp_path, capsys, data_format):
    out = tmp_path / data_format
    assert main(["synth", "--out", str(out), "--cases", "1", "--format", data_format, "--quiet"]) == 0
    assert f"in {data_format} format" in capsys.readouterr().out
    assert main(["check", "--data", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("1 ok, 0 bad")
    assert main(["synth", "--out", str(out), "--cases", "1", "--format", data_format]) == 2  # not empty

"""``kidneyssl synth`` end to end: writes a KiTS19-layout dataset, refuses to overwrite without --force."""

from __future__ import annotations

import nibabel as nib

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

"""LabelPolicy: allowed values, kidney target, nnU-Net label names; table-driven."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.errors import DataError
from kidneyssl.io.labels import (
    KITS19_POLICY,
    KITS23_POLICY,
    LabelPolicy,
    parse_label_list,
    policy_from_nnunet_labels,
)

LABELS = np.array([0, 1, 2, 3, 0, 1], np.uint8)


@pytest.mark.parametrize("policy, target", [
    (KITS19_POLICY, [0, 1, 1, 1, 0, 1]),       # the fast path (> 0) on valid KiTS19 input
    (KITS23_POLICY, [0, 1, 1, 1, 0, 1]),       # cyst (3) counted as kidney
    (KITS23_POLICY.with_kidney_labels((1,)), [0, 1, 0, 0, 0, 1]),
    (KITS23_POLICY.with_kidney_labels((1, 3)), [0, 1, 0, 1, 0, 1]),
])
def test_target(policy, target):
    np.testing.assert_array_equal(policy.target(LABELS).astype(int), target)


def test_kidney_tumor_target_and_round_trip():
    np.testing.assert_array_equal(KITS23_POLICY.kidney_tumor_target(LABELS), [0, 1, 2, 1, 0, 1])
    assert KITS23_POLICY.with_kidney_labels((1, 3)).tumor is None  # tumour not in the target
    for policy in (KITS19_POLICY, KITS23_POLICY, LabelPolicy((5,), None, None, "custom")):
        assert LabelPolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize("policy, labels, field, text", [
    (KITS19_POLICY, [0, 1, 3], "labels", "{3} in 1 voxels (label 3 is the cyst of KiTS21/KiTS23: read it as KiTS23)"),
    (KITS19_POLICY, [0, 1, 5, 117], "labels", "found {5, 117} in 2 voxels"),
    (KITS23_POLICY, [0, 2, 5], "labels", "expected values in {0, 1, 2, 3}, found {5}"),
    (KITS19_POLICY, [0.0, 0.4, 1.0], "labels", "non-integer values such as {0.4}"),
    (KITS19_POLICY, [0, 2, 2], "kidney", "None"),
    (KITS23_POLICY.with_kidney_labels((1,)), [0, 2, 3], "kidney", "label 1"),
])
def test_check_errors_name_file_and_values(tmp_path, policy, labels, field, text):
    labels = np.asarray(labels)
    if field == "kidney" and policy is KITS19_POLICY:  # no kidney at all
        labels = np.zeros(3, np.uint8)
    errors = policy.check(tmp_path / "seg.nii.gz", labels)
    assert len(errors) == 1 and errors[0].field == field
    if text != "None":
        assert text in str(errors[0])
    assert str(tmp_path / "seg.nii.gz") in str(errors[0])


def test_check_accepts():
    assert KITS19_POLICY.check("a", np.array([0.0, 1.0, 2.0], np.float32)) == []  # integral floats
    assert KITS23_POLICY.check("a", np.array([0, 3], np.uint8)) == []
    assert LabelPolicy((2, 3)).check("a", np.array([0, 2, 117])) == []  # allowed=None: any integer


@pytest.mark.parametrize("labels, kidney, tumor", [
    ({"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "gallbladder": 4,
      "adrenal gland": 5}, (2, 3), None),                                   # multi-organ (AMOS-like)
    ({"background": 0, "kidney_left": 1, "kidney_right": 2, "kidney_cyst_left": 3, "liver": 4}, (1, 2, 3), None),
    ({"0": "background", "1": "Kidney", "2": "Tumor"}, (1, 2), 2),           # v1, kidney-only task
    ({"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}, (1, 2, 3), 2),  # KiTS23 regions
    ({"background": 0, "liver": 1, "kidney_tumor": 2, "kidney": 3}, (2, 3), 2),
])
def test_nnunet_label_names(labels, kidney, tumor):
    policy = policy_from_nnunet_labels(labels)
    assert policy.kidney == kidney and policy.tumor == tumor and policy.name == "nnunet"
    assert 0 in policy.allowed


def test_nnunet_without_kidney_and_label_lists():
    with pytest.raises(DataError, match="named as a kidney.*say which labels are kidney") as info:
        policy_from_nnunet_labels({"background": 0, "liver": 1}, "x/dataset.json")
    assert info.value.remedy == ("kidney_labels",)
    assert parse_label_list("1, 2,3") == (1, 2, 3) and parse_label_list(None) is None
    for bad in ("a,b", "0,1", "-1"):
        with pytest.raises(ValueError):
            parse_label_list(bad)

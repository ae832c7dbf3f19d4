import pytest

from cxr_edge.errors import UnknownTaskError
from cxr_edge.tasks import InputSpec, Int8Tolerance, get_task, task_names


def test_registry_has_the_three_models_and_the_13_and_15_label_variants():
    assert task_names() == ["cxr3", "cxr4", "gate", "nih13", "nih14", "nih15"]
    assert get_task("cxr4").labels == ("COVID-19", "Normal", "Pneumonia", "Tuberculosis")
    assert get_task("nih14").num_labels == 14
    assert get_task("nih13").labels == tuple(l for l in get_task("nih14").labels if l != "Pleural_Thickening")
    assert get_task("nih15").labels == (*get_task("nih14").labels, "No Finding")
    assert get_task("nih15").family == "nih14"


def test_heads_and_losses_match():
    assert get_task("cxr4").activation == "softmax" and get_task("cxr4").loss == "categorical_crossentropy"
    assert get_task("cxr3").activation == "softmax"
    for name in ("gate", "nih14", "nih13"):
        assert get_task(name).loss == "binary_crossentropy" and get_task(name).multilabel
    assert get_task("nih14").primary_metric == "mean_auroc"
    assert get_task("cxr4").primary_metric == "macro_f1"
    assert get_task("gate").primary_metric == "auroc"


def test_variants_fill_their_family_slot():
    assert get_task("nih13").family == get_task("nih14").family == "nih14"
    assert get_task("cxr3").family == get_task("cxr4").family == "cxr4"
    assert get_task("cxr3").labels == get_task("cxr4").labels[:3]


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError) as err:
        get_task("covid")
    assert "cxr4" in str(err.value) and "gate" in str(err.value) and "nih14" in str(err.value)


def test_specs_are_frozen_and_roundtrip():
    spec = get_task("cxr4")
    with pytest.raises(Exception):
        spec.labels = ("a",)
    assert InputSpec.from_dict(spec.input.to_dict()) == spec.input
    assert Int8Tolerance.from_dict(spec.tolerance.to_dict()) == spec.tolerance
    assert spec.with_input(size=96).input.size == 96 and spec.input.size == 224


def test_bad_input_spec_values_are_refused():
    with pytest.raises(ValueError, match="channels"):
        InputSpec(channels=2)
    with pytest.raises(ValueError, match="resize"):
        InputSpec(resize="crop")
    with pytest.raises(ValueError, match="unknown tolerance"):
        Int8Tolerance.from_dict({"auroc": 0.1})

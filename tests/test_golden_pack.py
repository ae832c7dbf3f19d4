"""The bundled pack's answers on 50 fixed shared images are byte-identical to the committed golden file.

A refactoring must not change a single byte; when the answers are meant to change (a rebuilt pack,
a deliberate behaviour change), regenerate the file as ``tests/golden_pack.py`` says.
"""

import json

import pytest

from golden_pack import GOLDEN, predict_lines


def _golden_files() -> list[str]:
    return [json.loads(line)["file"] for line in GOLDEN.read_text().splitlines()]


def test_golden_file_is_a_fixed_mix():
    files = _golden_files()
    assert len(files) == 50 and len(set(files)) == 50
    assert all(not f.startswith("/") for f in files)   # relative to ../shared/data: nothing machine-specific
    statuses = {json.loads(line)["status"] for line in GOLDEN.read_text().splitlines()}
    assert {"ok", "rejected"} <= statuses


def test_default_pack_answers_are_unchanged(shared_data):
    files = _golden_files()
    missing = [f for f in files if not (shared_data / f).is_file()]
    if missing:
        pytest.skip(f"{len(missing)} of the golden images are not in {shared_data} (e.g. {missing[0]})")
    got = predict_lines(shared_data, files)
    want = GOLDEN.read_text().splitlines()
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w, f"{json.loads(w)['file']}: the answer changed"

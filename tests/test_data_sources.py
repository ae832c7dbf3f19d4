"""Source readers on the real manifests, a Data_Entry table, class folders and deliberately broken tables."""

import csv
import shutil
from collections import Counter

import pytest

from cxr_edge.data.labels import LabelMapper
from cxr_edge.data.licenses import is_permissive, license_rank
from cxr_edge.data.sources import SourceOptions, SourceSpec, load_sources
from cxr_edge.errors import DataError
from cxr_edge.tasks import get_task


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_label_aliases_map_onto_task_labels():
    m = LabelMapper(get_task("cxr4"), {"corona": "COVID-19"})
    for name, label in [("COVID19", "COVID-19"), ("covid", "COVID-19"), ("corona", "COVID-19"), ("TB", "Tuberculosis"),
                        ("NORMAL", "Normal"), ("PNEUMONIA", "Pneumonia"), ("Tuberculosis", "Tuberculosis")]:
        assert m.lookup(name) == label, name
    assert m.map_names(["Lung_Opacity"]).unknown == ("Lung_Opacity",)
    with pytest.raises(DataError, match="not a label of task cxr4"):
        LabelMapper(get_task("cxr4"), {"x": "Cardiomegaly"})
    nih13 = LabelMapper(get_task("nih13")).map_names(["Effusion", "Pleural_Thickening", "No Finding"])
    assert nih13.dropped == ("Pleural_Thickening",) and nih13.no_finding and sum(nih13.labels) == 1


def test_licence_ranking():
    assert is_permissive("NIH ChestX-ray14 (unrestricted use, citation requested)")
    assert is_permissive("CC BY 4.0")
    assert not is_permissive("CC BY-NC-SA 4.0") and not is_permissive("") and not is_permissive("GPL-2+")
    assert license_rank("CC BY-NC-SA") > license_rank("CC BY-SA 3.0") > license_rank("CC BY") > license_rank("CC0")


def test_redistributable_leaves_out_research_only_and_unknown_terms():
    from cxr_edge.data.licenses import is_redistributable

    assert is_redistributable("CC BY-NC-SA 2.0 (TBX11K)")      # non-commercial: a model may be shared so
    assert is_redistributable("GPL-2+ (debian/copyright of mate-backgrounds)")
    assert not is_redistributable("challenge data terms (SIIM/RSNA)")
    assert not is_redistributable("bob.med.tb package GPL-3.0; image from NLM Montgomery set (NLM terms)")
    assert not is_redistributable("") and not is_redistributable(None)


def test_nih_manifest_and_official_split(shared_data):
    loaded = load_sources(get_task("nih14"), [SourceSpec(str(shared_data / "nih_cxr14/manifest.csv"))])
    recs = loaded.records
    assert len(recs) == 1407 and loaded.official_available
    assert Counter(r.official_split for r in recs) == {"train_val": 1206, "test": 201}
    assert all(r.patient_id.startswith("nih:") and r.dataset == "NIH ChestX-ray14" and r.permissive for r in recs)
    hernia = get_task("nih14").labels.index("Hernia")
    assert sum(r.labels[hernia] for r in recs) == 20


def test_nih_data_entry_with_image_folder_and_test_list(shared_data):
    meta = shared_data / "nih_cxr14/metadata"
    loaded = load_sources(get_task("nih13"), [SourceSpec(str(meta / "Data_Entry_2017_v2020.csv.gz"))],
                          SourceOptions(images=(str(shared_data / "nih_cxr14/images"),)))
    assert len(loaded.records) == 1407
    assert loaded.sources[0]["type"] == "nih_data_entry"
    assert loaded.sources[0]["official_split"]["test_names"] == 25596  # found next to the table
    assert Counter(r.official_split for r in loaded.records)["test"] == 201
    w = loaded.issues.to_dict()
    assert w["missing_files"]["count"] == 112120 - 1407  # listed in the table, not on disk: counted
    assert w["labels_not_in_task"]["by"] == {"Pleural_Thickening": 78}  # nih13 leaves it out, and says so


def test_gate_manifest_takes_patient_ids_from_metadata(shared_data):
    d = shared_data
    loaded = load_sources(get_task("gate"), [SourceSpec(str(d / "gate/manifest.csv"))], SourceOptions(
        metadata=(str(d / "nih_cxr14/manifest.csv"), str(d / "cxr4/manifest.csv"))))
    recs = loaded.records
    assert Counter(r.labels for r in recs) == {(1,): 3243, (0,): 220}
    by_path = {r.path: r for r in recs}
    nih = by_path[str((d / "nih_cxr14/images/00000061_012.png").resolve())]  # sources resolve their paths
    assert nih.patient_id == "nih:61" and nih.sex == "M" and nih.age == 77


def test_gate_positives_and_negatives(shared_data):
    loaded = load_sources(get_task("gate"), [SourceSpec(str(shared_data / "cxr_other/manifest.csv"), "positive"),
                                             SourceSpec(str(shared_data / "noncxr/images"), "negative")])
    assert Counter(r.labels for r in loaded.records) == {(1,): 40, (0,): 220}
    with pytest.raises(DataError, match="for the gate task"):
        load_sources(get_task("cxr4"), [SourceSpec(str(shared_data / "noncxr/images"), "negative")])


def test_class_folders_with_aliases_and_split_folders(shared_data, tmp_path):
    src = sorted((shared_data / "cxr4/images").glob("*.png"))[:8]
    layout = {"train/COVID19": src[0:2], "train/NORMAL": src[2:4], "test/TB": src[4:5], "test/pneumonia": src[5:6],
              "train/Lung_Opacity": src[6:8]}
    for folder, files in layout.items():
        (tmp_path / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, tmp_path / folder / f.name)
    loaded = load_sources(get_task("cxr4"), [SourceSpec(str(tmp_path))])
    recs = loaded.records
    assert Counter(r.labels for r in recs) == {(1, 0, 0, 0): 2, (0, 1, 0, 0): 2, (0, 0, 0, 1): 1, (0, 0, 1, 0): 1}
    assert Counter(r.official_split for r in recs) == {"train_val": 4, "test": 2}
    w = loaded.issues.to_dict()
    assert w["unknown_labels"]["by"] == {"Lung_Opacity": 2} and w["unusable_labels"]["count"] == 2


def test_problems_are_counted_never_silent(shared_data, tmp_path):
    imgs = sorted((shared_data / "nih_cxr14/images").glob("*.png"))[:4]
    manifest = _write_csv(tmp_path / "m.csv", ["file", "label", "patient_id"], [
        [str(imgs[0]), "Pneumonia", "a"],
        [str(imgs[1]), "Normal", "b"],
        [str(imgs[1]), "Normal", "b"],            # duplicate row
        [str(imgs[2]), "Lung Opacity", "c"],      # unknown label
        [str(imgs[3]), "COVID|Normal", "d"],      # two labels for a one-of-N task
        [str(tmp_path / "gone.png"), "Normal", "e"],  # missing file
    ])
    loaded = load_sources(get_task("cxr4"), [SourceSpec(str(manifest))])
    assert len(loaded.records) == 2
    w = loaded.issues.to_dict()
    assert w["duplicate_rows"]["count"] == 1
    assert w["unknown_labels"]["by"] == {"Lung Opacity": 1}
    assert w["missing_files"]["count"] == 1
    assert w["unusable_labels"]["count"] == 2
    assert {e[2] for e in loaded.issues.excluded} == {"duplicate_rows", "missing_files", "unusable_labels"}


def test_bad_sources_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_sources(get_task("cxr4"), [SourceSpec(str(tmp_path / "nope.csv"))])
    bad = _write_csv(tmp_path / "bad.csv", ["file", "comment"], [["a.png", "x"]])
    with pytest.raises(DataError, match="no label column"):
        load_sources(get_task("cxr4"), [SourceSpec(str(bad))])
    with pytest.raises(DataError, match="no data source"):
        load_sources(get_task("cxr4"), [])


def test_data_entry_with_images_0nn_folders(shared_data, tmp_path):
    """The NIH download layout: images_001/images/*.png … images_012/images/*.png, found by file name."""
    imgs = sorted((shared_data / "nih_cxr14/images").glob("*.png"))[:5]
    for i, f in enumerate(imgs):
        folder = tmp_path / f"images_{1 + i // 3:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / f.name)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position"]
    rows = [[f.name, "Hernia|Mass" if i == 0 else "No Finding", "0", str(int(f.name[:8])), "058Y", "F", "PA"]
            for i, f in enumerate(imgs)]
    rows.append(["99999999_000.png", "Mass", "0", "99999999", "40", "M", "AP"])  # listed, not downloaded
    table = _write_csv(tmp_path / "Data_Entry_2017.csv", header, rows)
    (tmp_path / "test_list.txt").write_text(imgs[0].name + "\n")
    loaded = load_sources(get_task("nih14"), [SourceSpec(str(table))], SourceOptions(images=(str(tmp_path),)))
    recs = sorted(loaded.records, key=lambda r: r.path)
    assert len(recs) == 5 and loaded.issues.count("missing_files") == 1
    first = next(r for r in recs if r.path.endswith(imgs[0].name))
    assert first.official_split == "test" and first.age == 58 and first.sex == "F"
    assert first.labels[get_task("nih14").labels.index("Hernia")] == 1
    assert sum(r.no_finding for r in recs) == 4 and "images_002" in recs[-1].path

"""Labels bound to content (issue 24 point 6): split.csv records each file's sha256, and evaluation, export,
conformal calibration and Grad-CAM refuse in one line naming the class when files no longer hold it (two class
folders swapped, a photo edited); a split.csv from before the column still loads, and says so once."""

import csv
import hashlib
import json
import os
import shutil

import pytest
from PIL import Image

from mineralnet import rundir
from mineralnet.conformal import main as conformal_main
from mineralnet.data.split import HASH
from mineralnet.evaluate import main as evaluate_main
from mineralnet.export.cli import main as export_main
from mineralnet.gradcam import main as gradcam_main


def _rows(split_file):
    with open(split_file, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def moved_run(tiny_export, tmp_path):
    """tiny_export's run with its data copied to tmp_path/data (config.json pointing there) and its float32 model
    and sidecar copied beside it: the test may swap or edit the copy. Returns (run dir, data dir, tflite path)."""
    source = rundir.Run(tiny_export["run"])
    data = tmp_path / "data"
    shutil.copytree(tiny_export["data"], data)
    run = tmp_path / "run"
    run.mkdir()
    for name in (rundir.LABELS, rundir.SPLIT, rundir.MODEL):
        shutil.copy(source.file(name), run / name)
    (run / rundir.CONFIG).write_text(json.dumps({**source.config, "data": str(data)}))
    model = tmp_path / "model_float32.tflite"
    shutil.copy(tiny_export["float32"], model)
    shutil.copy(tiny_export["float32"][: -len(".tflite")] + ".json", tmp_path / "model_float32.json")
    return str(run), data, str(model)


def _one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_split_csv_records_each_files_sha256(tiny_export):
    rows = _rows(os.path.join(tiny_export["run"], rundir.SPLIT))
    assert list(rows[0]) == ["path", "label", HASH, "subset"]
    for row in rows:
        with open(os.path.join(tiny_export["data"], *row["path"].split("/")), "rb") as handle:
            assert row[HASH] == hashlib.sha256(handle.read()).hexdigest(), row["path"]


def test_swapped_class_folders_are_refused_by_every_tool_naming_the_classes(moved_run, tiny_export, tmp_path,
                                                                            capsys):
    run, data, model = moved_run
    first, second = tiny_export["labels"][:2]
    os.rename(data / first, data / "swap")
    os.rename(data / second, data / first)
    os.rename(data / "swap", data / second)
    image = str(data / first / sorted(os.listdir(data / first))[0])
    sidecar_before = (tmp_path / "model_float32.json").read_text()
    commands = {
        "evaluate": (evaluate_main, ["--run", run, "--no-baseline", "--out", str(tmp_path / "eval")]),
        "export": (export_main, ["--run", run, "--formats", "float32", "--out", str(tmp_path / "export")]),
        "conformal": (conformal_main, ["--run", run, "--model", model]),
        "gradcam": (gradcam_main, ["--run", run, "--images", image, "--out", str(tmp_path / "cam")]),
    }
    for name, (main, argv) in commands.items():
        assert main(argv) == 2, name
        line = _one_error_line(capsys)
        assert f"'{first}'" in line and "swapped or files edited" in line, (name, line)
        if name != "gradcam":  # Grad-CAM checks only the images it is given: those of one class here
            assert f"'{second}'" in line, (name, line)
    for written in ("eval", "export", "cam"):
        assert not (tmp_path / written).exists()
    assert (tmp_path / "model_float32.json").read_text() == sidecar_before  # the rule stays as it was


def test_an_edited_photo_is_refused_naming_its_class_only(moved_run, tiny_export, capsys):
    run, data, _ = moved_run
    row = next(r for r in _rows(os.path.join(run, rundir.SPLIT)) if r["subset"] == "test")
    path = data / row["path"]
    Image.open(path).rotate(90).save(path)  # the same name, another picture
    assert evaluate_main(["--run", run, "--no-baseline"]) == 2
    line = _one_error_line(capsys)
    assert f"'{row['label']}' (1 of" in line and row["path"] in line
    assert not any(f"'{label}'" in line for label in tiny_export["labels"] if label != row["label"])


def test_a_split_without_hashes_still_loads_and_says_so_once(moved_run, capsys):
    run, _, _ = moved_run
    split_file = os.path.join(run, rundir.SPLIT)
    rows = _rows(split_file)
    with open(split_file, "w", newline="") as handle:  # as train.py wrote it before the column existed
        writer = csv.DictWriter(handle, ["path", "label", "subset"], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    assert len(rundir.Run(run).rows("test")) == sum(r["subset"] == "test" for r in rows)
    assert len(rundir.Run(run).rows("train")) == sum(r["subset"] == "train" for r in rows)
    err = capsys.readouterr().err
    assert err.count("records no content hashes") == 1 and split_file in err

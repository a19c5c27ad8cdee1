"""export.py / mineralnet.export on the tiny trained run: files, sidecar contract, the gate, bad input."""

import hashlib
import os
import shutil
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from mineralnet.export import (
    FORMATS, MIN_FLOAT32_AGREEMENT, ExportError, check_no_flex, complete_export, list_operators, prepare_export,
)
from mineralnet.export.representative import representative_rows
from mineralnet.utils import read_json, write_json

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIDECAR_KEYS = {"format", "labels", "input", "output", "preprocessing", "sha256", "source_model_sha256", "run",
                "versions", "created"}
TENSOR_KEYS = {"shape", "dtype", "scale", "zero_point"}


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read_model(out_dir, fmt):
    with open(os.path.join(out_dir, f"model_{fmt}.tflite"), "rb") as handle:
        return handle.read()


def test_cli_writes_every_format_and_prints_the_table(exported):
    out_dir, stdout = exported
    expected = {f"model_{fmt}.{ext}" for fmt in FORMATS for ext in ("tflite", "json")}
    expected |= {"labels.txt", "report.json", "report.md"}
    assert set(os.listdir(out_dir)) == expected  # nothing else: no staging or temporary files
    assert not [n for n in os.listdir(os.path.dirname(out_dir)) if n.startswith(".export-staging-")]
    for fmt in FORMATS:
        assert f"| {fmt} |" in stdout
        assert f"| {fmt} |" in open(os.path.join(out_dir, "report.md")).read()


def test_sidecars_follow_the_contract(exported, export_run_dir):
    out_dir, _ = exported
    labels = read_json(os.path.join(export_run_dir, "labels.json"))
    size = read_json(os.path.join(export_run_dir, "config.json"))["image_size"]
    for fmt in FORMATS:
        sidecar = read_json(os.path.join(out_dir, f"model_{fmt}.json"))
        assert set(sidecar) == SIDECAR_KEYS
        assert sidecar["format"] == fmt and sidecar["labels"] == labels
        assert set(sidecar["input"]) == TENSOR_KEYS and set(sidecar["output"]) == TENSOR_KEYS
        assert sidecar["input"]["shape"] == [1, size, size, 3]
        assert sidecar["output"]["shape"] == [1, len(labels)]
        assert sidecar["preprocessing"] == {"pixels": "raw RGB 0-255", "color": "RGB", "input_size": size,
                                            "resize_method": "pillow-bilinear",
                                            "decode": "pillow-exif-orientation-icc-srgb-relative"}
        assert sidecar["sha256"] == sha256(os.path.join(out_dir, f"model_{fmt}.tflite"))
        assert sidecar["source_model_sha256"] == sha256(os.path.join(export_run_dir, "model.keras"))
        assert sidecar["run"] == os.path.abspath(export_run_dir)
        assert set(sidecar["versions"]) == {"tensorflow", "keras", "mineralnet", "exporter"}
        assert sidecar["versions"]["exporter"].startswith("mineralnet.export ")
        assert datetime.fromisoformat(sidecar["created"]).utcoffset().total_seconds() == 0
        # The sidecar describes the file: compare with what the interpreter reads from the model itself.
        interpreter = Interpreter(model_content=read_model(out_dir, fmt))
        for contract, detail in ((sidecar["input"], interpreter.get_input_details()[0]),
                                 (sidecar["output"], interpreter.get_output_details()[0])):
            assert contract["dtype"] == np.dtype(detail["dtype"]).name
            assert (contract["scale"], contract["zero_point"]) == pytest.approx(detail["quantization"])
    quantised = read_json(os.path.join(out_dir, "model_float32.json"))["input"]
    assert (quantised["dtype"], quantised["scale"], quantised["zero_point"]) == ("float32", 0.0, 0)


def test_labels_txt_matches_labels_json(exported, export_run_dir):
    out_dir, _ = exported
    with open(os.path.join(out_dir, "labels.txt")) as handle:
        assert handle.read().splitlines() == read_json(os.path.join(export_run_dir, "labels.json"))


def test_int8_takes_raw_uint8_pixels(exported):
    interpreter = Interpreter(model_content=read_model(exported[0], "int8"))
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8
    assert detail["quantization"] == (1.0, 0)  # camera pixels go in unchanged
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8


def test_no_flex_ops_in_any_model(exported):
    for fmt in FORMATS:
        operators = list_operators(read_model(exported[0], fmt))
        assert "CONV_2D" in operators  # really read from the file
        assert not [name for name in operators if name.startswith("Flex")], fmt


def test_flex_check_names_the_ops_of_a_model_that_has_them():
    import tensorflow as tf

    function = tf.function(tf.linalg.det, input_signature=[tf.TensorSpec([1, 2, 2], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ExportError, match="FlexMatrixDeterminant"):
        check_no_flex(converter.convert(), "test")


def test_float32_agrees_with_keras_on_the_test_rows(exported, export_run_dir):
    """Checked here independently of the exporter's own gate: Keras from model.keras vs the written file."""
    from mineralnet.data import load_image, read_split
    from mineralnet.rundir import Run

    run = Run(export_run_dir)
    rows = read_split(run.file("split.csv"), run.train_config.data)
    images = np.stack([load_image(r["file"], run.image_size) for r in rows if r["subset"] == "test"])
    keras_top1 = run.load_model().predict(images.astype(np.float32), verbose=0).argmax(1)
    interpreter = Interpreter(model_content=read_model(exported[0], "float32"))
    interpreter.allocate_tensors()
    tflite_top1 = []
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None].astype(np.float32))
        interpreter.invoke()
        tflite_top1.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0].argmax())
    assert np.mean(keras_top1 == np.array(tflite_top1)) >= MIN_FLOAT32_AGREEMENT
    report = read_json(os.path.join(exported[0], "report.json"))
    assert report["gate"]["passed"] and report["test_images"] == len(images)


def test_report_has_every_measure_per_format(exported):
    report = read_json(os.path.join(exported[0], "report.json"))
    assert list(report["formats"]) == list(FORMATS)
    for result in report["formats"].values():
        for key in ("accuracy", "macro_precision", "macro_recall", "agreement_with_keras", "mean_abs_prob_diff",
                    "max_abs_prob_diff", "size_bytes"):
            assert isinstance(result[key], (int, float)), key
        assert set(result["latency_ms"]) == {"1", "2"}
        assert all(0 < t["p50"] <= t["p90"] for t in result["latency_ms"].values())
    assert report["latency_runs"] >= 50 and report["calibration_images"] == 8


def test_a_network_that_is_no_classifier_is_written_int8_with_float_input_and_output():
    """convert_network's int8 (the contact line's format, edge/contact.py): int8 inside, float32 at both ends, its
    output the Keras network's within the quantization's error; refused in one line without calibration inputs."""
    import keras

    from mineralnet.export.convert import convert_network

    rng = np.random.default_rng(0)
    inputs = keras.Input((16, 16, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(
        keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)))
    calibration = rng.random((20, 16, 16, 4)).astype(np.float32)
    interpreter = Interpreter(model_content=convert_network(model, (1, 16, 16, 4), "int8", calibration))
    interpreter.allocate_tensors()
    first, last = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert first["dtype"] == np.float32 and last["dtype"] == np.float32
    assert np.int8 in {t["dtype"] for t in interpreter.get_tensor_details()}
    sample = rng.random((1, 16, 16, 4)).astype(np.float32)
    interpreter.set_tensor(first["index"], sample)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(last["index"]), model.predict(sample, verbose=0), atol=0.03)
    with pytest.raises(ExportError, match="needs calibration inputs"):
        convert_network(model, (1, 16, 16, 4), "int8")


def test_calibration_uses_training_rows_only_balanced_over_classes():
    rows = [{"path": f"{label}/{i}", "label": label, "subset": subset}
            for label, count in (("a", 20), ("b", 3)) for i in range(count)
            for subset in ("train", "val", "test")]
    chosen = representative_rows(rows, 8)
    assert {row["subset"] for row in chosen} == {"train"}
    assert sorted(row["label"] for row in chosen) == ["a"] * 5 + ["b"] * 3  # b has only 3 training rows
    assert len({row["path"] for row in chosen}) == 8
    assert chosen == representative_rows(rows, 8)  # seeded: the same rows every export


def test_gate_fails_when_the_converted_model_differs_from_the_reference(cnn_run_dir, tmp_path):
    out_dir = tmp_path / "out"
    plan = prepare_export(cnn_run_dir, formats="float32", out_dir=out_dir)
    head = plan.model.get_layer("predictions")
    head.set_weights([-w for w in head.get_weights()])  # after the Keras predictions: every top-1 now differs
    with pytest.raises(ExportError, match="agrees with Keras on only"):
        complete_export(plan)
    assert not out_dir.exists()
    assert os.listdir(tmp_path) == []  # the staging directory is gone too


def test_an_export_removes_the_staging_folder_a_killed_export_to_the_same_output_left(cnn_run_dir, tmp_path):
    from mineralnet.rundir import Run

    out_dir = tmp_path / "out"
    killed = tmp_path / ".export-staging-out-k1ll3d"  # what a SIGKILLed export to out_dir leaves beside it
    other = tmp_path / ".export-staging-elsewhere-r4nn1ng"  # an export to another output: not this one's to remove
    for folder in (killed, other):
        (folder / "qat").mkdir(parents=True)
        (folder / "model_float32.tflite").write_bytes(b"half a model")
    run = Run(cnn_run_dir)
    plan = prepare_export(run, formats="float32", out_dir=out_dir, max_accuracy_drop=100)
    assert plan.run is run  # the one Run the caller handed in, not a second one
    complete_export(plan)
    assert sorted(os.listdir(tmp_path)) == [other.name, "out"]
    assert "model_float32.tflite" in os.listdir(out_dir)


@pytest.fixture
def assert_fails(run_cli):
    """assert_fails(argv, *texts, out_dir=None): the CLI exits 2 with one `error: ` line holding every text,
    and writes no `out_dir`."""

    def check(argv, *expected, out_dir=None):
        code, stdout, stderr = run_cli(argv)
        assert code == 2 and stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        for text in expected:
            assert text in lines[0]
        if out_dir:
            assert not os.path.exists(out_dir)

    return check


def test_missing_run_dir(assert_fails, tmp_path):
    assert_fails(["--run", str(tmp_path / "nope")], str(tmp_path / "nope"), "does not exist")


def test_incomplete_run_dir(assert_fails, link_run, tiny_run, tmp_path):
    run = link_run(tiny_run, tmp_path / "run", files=("labels.json", "split.csv", "config.json"))
    assert_fails(["--run", run], "model.keras", "incomplete", out_dir=os.path.join(run, "export"))


def test_unknown_format(assert_fails, tiny_run, tmp_path):
    assert_fails(["--run", tiny_run, "--formats", "float32,int4", "--out", str(tmp_path / "out")], "int4",
                 "float32, float16, dynamic, int8", out_dir=tmp_path / "out")


def test_model_that_does_not_load(assert_fails, link_run, tiny_run, tmp_path):
    run = link_run(tiny_run, tmp_path / "run", files=("labels.json", "split.csv", "config.json"))
    with open(os.path.join(run, "model.keras"), "wb") as handle:
        handle.write(b"not a keras zip")
    assert_fails(["--run", run], os.path.join(run, "model.keras"), "does not load", out_dir=os.path.join(run, "export"))


def test_split_whose_images_are_gone(assert_fails, link_run, tiny_run, tmp_path):
    run = link_run(tiny_run, tmp_path / "run", files=("model.keras", "labels.json", "split.csv"))
    config = read_json(os.path.join(tiny_run, "config.json"))
    moved = shutil.copytree(config["data"], tmp_path / "data")
    write_json(os.path.join(run, "config.json"), dict(config, data=str(moved)))
    shutil.rmtree(moved / read_json(os.path.join(run, "labels.json"))[0])
    assert_fails(["--run", run], os.path.join(run, "split.csv"), "no longer exist", "config.json",
                 out_dir=os.path.join(run, "export"))


@pytest.mark.parametrize("command", [["export.py"], ["-m", "mineralnet.export"]])
def test_script_exits_non_zero_with_one_error_line(tmp_path, command):
    done = subprocess.run([sys.executable, *command, "--run", str(tmp_path / "nope")], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run directory '{tmp_path / 'nope'}' does not exist"), done.stderr


def test_an_export_that_fails_between_two_publish_steps_leaves_the_old_export_whole(cnn_run_dir, tmp_path,
                                                                                    monkeypatch):
    """The second filesystem step on the output folder (a rename, os.replace or the folder swap) fails: the folder
    holds the previous export exactly (or the new one), never a new model beside the old sidecar or an old
    model_int8.tflite beside new files (issue 25 point 4; tests/test_export_publish.py kills before every step)."""
    from mineralnet.export import publish

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = {"model_float32.tflite": b"old", "model_float32.json": b"{}", "model_int8.tflite": b"old int8",
           "model_int8.json": b"{}", "labels.txt": b"old\n", "report.json": b"{}", "report.md": b"old"}
    for name, data in old.items():
        (out_dir / name).write_bytes(data)
    plan = prepare_export(cnn_run_dir, formats="float32", out_dir=out_dir)
    steps = []

    def failing(function):
        def step(*args, **kwargs):
            if any(str(a) == str(out_dir) or str(a).startswith(str(out_dir) + os.sep) for a in args[:2]):
                steps.append(args[:2])  # a step of the publish (the staging folder's own writes are not)
                if len(steps) == 2:
                    raise OSError("simulated crash")
            return function(*args, **kwargs)
        return step

    monkeypatch.setattr(os, "replace", failing(os.replace))
    monkeypatch.setattr(os, "rename", failing(os.rename))
    monkeypatch.setattr(publish, "_exchange", failing(publish._exchange), raising=False)
    try:
        complete_export(plan)
    except OSError as error:
        assert "simulated crash" in str(error)
    contents = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    new = {"model_float32.tflite", "model_float32.json", "labels.txt", "report.json", "report.md"}
    assert contents == old or (set(contents) == new and contents["model_float32.tflite"] != b"old"), contents

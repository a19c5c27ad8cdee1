"""int8_qat and --prune-sparsity on the shared tiny run (tests/conftest.py `tiny_run`): the tf_keras twin, one
QAT epoch, conversion, the verification gate, pruning, and Keras 3 still in charge of this process afterwards."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from mineralnet.export import ExportError, list_operators
from mineralnet.export.delegation import delegation
from mineralnet.export.qat import process
from mineralnet.export.qat.process import ChildOutput, QatOptions, check_options
from mineralnet.export.rewrite import INTEGER_GELU, rewrite_for_export
from mineralnet.utils import read_json

from helpers import REPO, run_python

# Not pytest.importorskip: importing tfmot sets TF_USE_LEGACY_KERAS=1 in the importing process, the very leak
# test_keras3_still_in_charge_after_qat rules out. find_spec looks without importing.
if importlib.util.find_spec("tensorflow_model_optimization") is None:
    pytest.skip("tensorflow-model-optimization is not installed: pip install 'mineralnet[qat]'",
                allow_module_level=True)

SPARSITY = 0.5


@pytest.fixture(scope="module")
def free_batch_export(tiny_run, link_run, tmp_path_factory):
    """(run, process, log) of `export.py --batch dynamic` with the tf_keras process's formats, started in a process
    of its own so it runs beside qat_exported's export: each is mostly one thread at a time (the tf_keras process,
    the converter), so on two cores the pair takes little more than one (the suite's largest item)."""
    run = link_run(tiny_run, tmp_path_factory.mktemp("qat_free_batch") / "run")
    log = os.path.join(os.path.dirname(run), "export.log")
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "export.py", "--run", run, "--formats", "float32,int8_qat", "--qat-epochs", "1",
             "--prune-sparsity", "0.5", "--batch", "dynamic", "--calibration-samples", "8", "--max-accuracy-drop",
             "100"], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    yield run, process, log
    if process.poll() is None:  # a selection that skipped its test: do not leave the export behind
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def qat_exported(free_batch_export, tiny_run, link_run, run_cli, tmp_path_factory):
    """(out_dir, stdout, report) of one export with int8, int8_qat (1 epoch) and pruning at 50 %, in this process
    while free_batch_export's runs beside it."""
    run = link_run(tiny_run, tmp_path_factory.mktemp("qat") / "run")
    code, stdout, stderr = run_cli(["--run", run, "--formats", "float32,int8,int8_qat", "--qat-epochs", "1",
                                    "--prune-sparsity", str(SPARSITY), "--calibration-samples", "8"])
    assert code == 0, stderr
    out_dir = os.path.join(run, "export")
    return out_dir, stdout, read_json(os.path.join(out_dir, "report.json"))


def read_model(out_dir, fmt):
    with open(os.path.join(out_dir, f"model_{fmt}.tflite"), "rb") as handle:
        return handle.read()


def test_writes_verified_models_with_the_int8_qat_row_after_int8(qat_exported):
    out_dir, stdout, report = qat_exported
    formats = ("float32", "int8", "int8_qat", "float32_pruned")
    assert set(os.listdir(out_dir)) == {f"model_{f}.{ext}" for f in formats for ext in ("tflite", "json")} | {
        "labels.txt", "report.json", "report.md"}  # no staging, inputs.npz or result.json left over
    assert list(report["formats"]) == list(formats)
    rows = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")]
    assert rows[rows.index("int8") + 1] == "int8_qat"
    markdown = open(os.path.join(out_dir, "report.md")).read()
    assert "| int8_qat |" in markdown and "tf_keras twin" in markdown and "no speed-up expected" in markdown


def test_twin_agrees_with_the_keras_model_before_training(qat_exported):
    twin = qat_exported[2]["tf_keras_twin"]
    assert twin["max_abs_prob_diff"] <= 1e-4 and twin["images"] == qat_exported[2]["test_images"]
    assert twin["versions"]["tf_keras"].startswith("2.")


def test_one_qat_epoch_ran(qat_exported):
    qat = qat_exported[2]["qat"]
    assert qat["epochs"] == 1 and len(qat["history"]["loss"]) == 1 and qat["train_images"] > 0


def test_int8_qat_takes_uint8_pixels_passes_the_gate_and_has_no_flex(qat_exported):
    out_dir, _, report = qat_exported
    model = read_model(out_dir, "int8_qat")
    interpreter = Interpreter(model_content=model)
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (1.0, 0)
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8
    operators = list_operators(model)
    assert "FULLY_CONNECTED" in operators and not [name for name in operators if name.startswith("Flex")]
    assert report["gate"]["passed"]
    result = report["formats"]["int8_qat"]
    assert set(result) == set(report["formats"]["int8"])  # measured like every other format
    assert 0 <= result["agreement_with_keras"] <= 1 and result["input"]["dtype"] == "uint8"
    sidecar, int8_sidecar = (read_json(os.path.join(out_dir, f"model_{f}.json")) for f in ("int8_qat", "int8"))
    assert set(sidecar) == set(int8_sidecar) and sidecar["format"] == "int8_qat"
    assert sidecar["input"] == int8_sidecar["input"] and sidecar["preprocessing"] == int8_sidecar["preprocessing"]
    assert sidecar["source_model_sha256"] == int8_sidecar["source_model_sha256"]


def test_int8_qat_is_converted_like_int8_so_it_is_one_xnnpack_partition_like_it(qat_exported):
    """The QAT weights go through int8's own conversion (rewrites, LayerNorm statistics and stem float), so the
    int8_qat file has int8's operators and delegate partitions, read from both files; the previous conversion of
    the tf_keras model left GELU, RSQRT and SQUARED_DIFFERENCE outside XNNPACK (69 partitions on MINET-7).
    (test_int8_of_a_tiny_eca_convnext_is_one_xnnpack_partition shows that graph is one partition.)"""
    out_dir, _, report = qat_exported
    int8, qat = read_model(out_dir, "int8"), read_model(out_dir, "int8_qat")
    assert list_operators(qat) == list_operators(int8)
    assert delegation(qat) == delegation(int8) == report["formats"]["int8_qat"]["xnnpack"]
    assert not {"GELU", "RSQRT", "SQUARED_DIFFERENCE"} & set(report["formats"]["int8_qat"]["xnnpack"]["outside"])
    assert qat != int8  # the fine-tune changed the weights
    assert any(variant.startswith("int8_qat") for variant in report["rewrites"])


def test_qat_weights_that_compute_something_else_stop_the_export(tiny_run):
    """The exporter checks the weights it got back from the tf_keras process against the probabilities that
    process computed with them, so a weight put into the wrong layer cannot ship."""
    from mineralnet.export.preflight import load_model, load_run
    from mineralnet.export.rewrite import _leaves
    from mineralnet.export.representative import load_images

    run = load_run(tiny_run)
    model = load_model(run)
    images = load_images(run.rows("test"), run.image_size)
    weights = {layer.name: layer.get_weights() for layer in _leaves(model) if layer.weights}
    probabilities = rewrite_for_export(model, gelu=INTEGER_GELU)[0].predict(images.astype(np.float32), verbose=0)
    clone, _ = ChildOutput({}, {"int8_qat": (weights, probabilities)}).model("int8_qat", model, images,
                                                                              gelu=INTEGER_GELU)  # accepted
    np.testing.assert_allclose(clone.predict(images.astype(np.float32), verbose=0), probabilities, atol=1e-6)
    (stem,) = [name for name in weights if name.endswith("_stem_conv")]
    kernel, bias = weights[stem]
    flipped = {**weights, stem: [kernel[::-1, ::-1], bias]}  # a kernel in the wrong layout
    with pytest.raises(ExportError, match="int8_qat weights give probabilities"):
        ChildOutput({}, {"int8_qat": (flipped, probabilities)}).model("int8_qat", model, images, gelu=INTEGER_GELU)


def _zero_fraction_of_large_buffers(model_bytes, min_values=4096):
    """Share of exact zeros over the float32 buffers of at least `min_values` values (the kernels)."""
    model = schema.Model.GetRootAs(model_bytes, 0)
    zeros = total = 0
    for index in range(model.BuffersLength()):
        data = model.Buffers(index).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size >= 4 * min_values:
            values = data.view(np.float32)
            zeros, total = zeros + int(np.sum(values == 0)), total + values.size
    return zeros / total


def test_pruning_at_half_zeroes_half_the_pruned_weights(qat_exported):
    out_dir, _, report = qat_exported
    pruning = report["pruning"]
    assert pruning["zero_fraction"] == pytest.approx(SPARSITY, abs=0.02)
    assert pruning["layer_zero_fraction"]["min"] >= SPARSITY - 0.05 and pruning["pruned_layers"] >= 40
    # The zeros reach the file (what gzip shrinks): ConvNeXt's Dense/Conv2D kernels are ~99 % of its weights.
    assert _zero_fraction_of_large_buffers(read_model(out_dir, "float32_pruned")) > SPARSITY - 0.05
    assert _zero_fraction_of_large_buffers(read_model(out_dir, "float32")) < 0.01
    assert pruning["gzip_size_bytes"]["float32_pruned"] < 0.8 * pruning["gzip_size_bytes"]["float32"]


def test_the_pruned_model_is_converted_like_float32_so_it_is_one_xnnpack_partition(qat_exported):
    """The pruned weights go through float32's conversion (the exact rewrites): float32's operators, one partition
    with nothing outside. The tf_keras model converted directly kept ECA's STRIDED_SLICEs outside XNNPACK."""
    out_dir, _, report = qat_exported
    pruned = read_model(out_dir, "float32_pruned")
    assert list_operators(pruned) == list_operators(read_model(out_dir, "float32"))
    assert delegation(pruned) == report["formats"]["float32_pruned"]["xnnpack"] == {"partitions": 1, "outside": {}}


def test_int8_qat_and_the_pruned_model_take_a_free_batch_too(free_batch_export, qat_exported):
    """`--batch dynamic` with the tf_keras process's formats: converted in the exporter like the others, so each
    file's batch is free and a batch of test images gives what single calls give (check_batch, in the report).
    (qat_exported only so that its export runs while this one does.)"""
    run, process, log = free_batch_export
    assert process.wait(600) == 0, open(log).read()[-3000:]
    report = read_json(os.path.join(run, "export", "report.json"))
    for fmt in ("float32", "int8_qat", "float32_pruned"):
        interpreter = Interpreter(model_content=read_model(os.path.join(run, "export"), fmt))
        assert list(interpreter.get_input_details()[0]["shape_signature"])[0] == -1, fmt
        batch = report["formats"][fmt]["batch"]
        assert batch["checked_images"] == 8 and batch["max_abs_prob_diff_vs_single"] <= (
            0 if fmt == "int8_qat" else 1e-5), (fmt, batch)
        # one XNNPACK partition: before the LayerNorm affine was folded (equalize.fold_layernorm_affine), this
        # 2-epoch run's near-zero betas left 21 int8 ADDs outside the delegate of int8_qat (22 partitions)
        assert report["formats"][fmt]["xnnpack"]["partitions"] == 1, (fmt, report["formats"][fmt]["xnnpack"])


def test_keras3_still_in_charge_after_qat(qat_exported):
    import keras
    import tensorflow as tf

    import mineralnet

    assert "tf_keras" not in sys.modules and "tensorflow_model_optimization" not in sys.modules
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert keras.__version__.startswith("3.") and tf.keras.Model is keras.Model
    model = mineralnet.build_model("eca_convnext_tiny", num_classes=3, input_shape=(32, 32, 3))
    assert isinstance(model, keras.Model) and type(model).__module__.startswith("keras.src")
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 3)


def test_bad_prune_sparsity_fails_before_loading_anything(run_cli, tiny_run, tmp_path):
    code, stdout, stderr = run_cli(["--run", tiny_run, "--prune-sparsity", "1.5", "--out", str(tmp_path / "out")])
    assert code == 2 and stderr.strip().startswith("error: --prune-sparsity") and not (tmp_path / "out").exists()


def test_missing_qat_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(process.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExportError, match=r"pip install 'mineralnet\[qat\]'"):
        check_options(QatOptions(), ("float32", "int8_qat"))
    check_options(QatOptions(), ("float32", "int8"))  # nothing asked of tfmot: nothing checked


OLD_MODEL_TWIN = """
import sys
import numpy as np
sys.path.insert(0, "tests")
from helpers import OLD_FEATURE_LAYER, with_old_layer_names
from mineralnet.export.qat.process import require_convnext
from mineralnet.export.qat.twin import build_twin, check_agreement, copy_weights
from mineralnet.models import build_model, feature_layer

model = build_model("eca_convnext_tiny", 3, (32, 32, 3), dropout=0.1)
old = with_old_layer_names(model)  # a model.keras of a run from before the pooling layer was named avg_pool
assert feature_layer(old).name == OLD_FEATURE_LAYER
for source in (model, old):
    require_convnext(source, "model.keras")
    twin = build_twin(source)
    copy_weights(source, twin)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    print(feature_layer(source).name, [layer.name for layer in twin.layers[-4:]], check_agreement(source, twin, images))
"""


def test_the_twin_head_starts_at_the_feature_layer_also_in_an_old_model_file():
    """Its own process: the twin needs tf_keras, which this one must never import."""
    done = run_python(["-c", OLD_MODEL_TWIN], env={"TF_USE_LEGACY_KERAS": "1"})
    new, old = done.stdout.strip().splitlines()[-2:]
    assert new.startswith("avg_pool ['avg_pool', 'layer_normalization") and "'head_dropout', 'predictions']" in new
    assert old.startswith("global_average_pooling2d ['global_average_pooling2d', 'layer_normalization")

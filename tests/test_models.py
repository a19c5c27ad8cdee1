import json

import keras
import numpy as np
import pytest

from mineralnet.layers import ECA
from mineralnet.models import (WeightsError, build_model, classifier_layer, feature_layer, has_imagenet_weights,
                               list_models, model_info, registered_info, stem_layer, takes_any_size)
from mineralnet.models.convnext import convnext_tiny_backbone

from helpers import run_python


def test_registry_lists_and_rejects():
    assert {"eca_convnext_tiny", "convnext_tiny", "simple_cnn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", 3)


@pytest.mark.parametrize("name", list_models())
def test_model_info_names_layers_every_built_model_has(name):
    """The metadata consumers read instead of guessing: each declared layer exists by name in a tiny model."""
    info = model_info(name)
    model = build_model(name, 3, (32, 32, 3), dropout=0.1)  # dropout: head_dropout exists too
    layers = {layer.name: layer for layer in model.layers}
    assert info.name == name == model.name and registered_info(model) is info
    assert info.stem in layers and list(layers).index(info.stem) < list(layers).index(info.feature_layer)
    assert set(info.head_layers) <= set(layers) and info.head_layers[-1] == "predictions"
    assert feature_layer(model) is layers[info.feature_layer] and len(layers[info.feature_layer].input.shape) == 4
    assert info.any_size == takes_any_size(name) == (not isinstance(layers[info.feature_layer], keras.layers.Flatten))
    assert info.imagenet == has_imagenet_weights(name) and info.image_size == 224 and info.reference


@pytest.fixture
def renamed_layers_model():
    """A model registered (for this test only) with its own stem and classifier names, not those of head.py."""
    from mineralnet.models import registry

    @registry.register("test_renamed_layers", "first_conv", classifier="logits")
    def build(num_classes, input_shape, weights, **kwargs):
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(4, 3, name="first_conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="logits")(x)
        return keras.Model(inputs, outputs, name="test_renamed_layers")

    yield build_model("test_renamed_layers", 3, (32, 32, 3))
    del registry._BUILDERS["test_renamed_layers"], registry._INFO["test_renamed_layers"]


def test_grad_cam_and_the_exporter_take_the_layers_the_registry_entry_names(renamed_layers_model):
    """No module but the registry knows a layer's name: Grad-CAM's classifier, the stem int8 and QAT keep float,
    the classifier pruning leaves whole all come from ModelInfo."""
    from mineralnet.export.errors import ExportError
    from mineralnet.export.qat.process import require_convnext
    from mineralnet.gradcam import softmax_head

    model = renamed_layers_model
    info = registered_info(model)
    assert (info.stem, info.classifier, info.qat_twin) == ("first_conv", "logits", False)
    assert softmax_head(model) is classifier_layer(model) is model.get_layer("logits")
    assert stem_layer(model) is model.get_layer("first_conv") and feature_layer(model).name == "avg_pool"
    # the QAT twin flattens a nested stem into layers that keep its name as their prefix
    assert info.stem_parts(["image", "first_conv_conv", "first_conv_norm", "avg_pool"]) == [
        "first_conv_conv", "first_conv_norm"]
    with pytest.raises(ExportError, match="ConvNeXt models"):  # the twin rebuilds only the models that say so
        require_convnext(model, "model.keras")


def test_model_info_of_an_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        model_info("nope")


def test_parameter_counts_at_26_classes():
    assert build_model("eca_convnext_tiny", 26).count_params() == 27_840_140
    assert build_model("convnext_tiny", 26).count_params() == 27_840_122


def test_eca_layers_consume_the_stage_outputs():
    model = build_model("eca_convnext_tiny", 5, (64, 64, 3))
    ecas = [layer for layer in model.layers if isinstance(layer, ECA)]
    assert [layer.name for layer in ecas] == [f"eca_stage_{i}" for i in range(4)]
    assert [int(layer.kernel.shape[0]) for layer in ecas] == [3, 5, 5, 5]
    last_blocks = {0: 2, 1: 2, 2: 8, 3: 2}  # ConvNeXt-T depths 3, 3, 9, 3
    consumers = ["convnext_tiny_downsampling_block_0", "convnext_tiny_downsampling_block_1",
                 "convnext_tiny_downsampling_block_2", "avg_pool"]
    for stage, layer in enumerate(ecas):
        (node,) = layer._inbound_nodes
        producer = node.input_tensors[0]._keras_history.operation
        # The stage output is the residual *add*, whose inputs are the block input and the `_identity` branch.
        assert type(producer).__name__ == "Add", producer
        add_inputs = [t._keras_history.operation.name for t in producer._inbound_nodes[0].input_tensors]
        assert f"convnext_tiny_stage_{stage}_block_{last_blocks[stage]}_identity" in add_inputs
        (consumer,) = [n.operation.name for n in layer._outbound_nodes]
        assert consumer.startswith(consumers[stage])


def test_model_takes_raw_pixels_and_outputs_probabilities():
    model = build_model("eca_convnext_tiny", 4, (32, 32, 3))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert model.get_layer("convnext_tiny_prestem_normalization") is not None  # ImageNet mean/std inside


def test_saved_model_loads_in_fresh_process_importing_only_mineralnet(tmp_path):
    model = build_model("eca_convnext_tiny", 3, (32, 32, 3), dropout=0.2)
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", pixels)
    np.save(tmp_path / "y.npy", model.predict(pixels, verbose=0))
    model.save(tmp_path / "m.keras")
    script = (
        "import sys, numpy as np, keras, mineralnet\n"
        f"m = keras.models.load_model(r'{tmp_path / 'm.keras'}')\n"
        f"p = m.predict(np.load(r'{tmp_path / 'x.npy'}'), verbose=0)\n"
        f"print(float(np.abs(p - np.load(r'{tmp_path / 'y.npy'}')).max()))\n"
    )
    done = run_python(["-c", script])
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-6


def test_backbone_weights_file_is_loaded_exactly_and_head_stays_fresh(tmp_path):
    backbone = convnext_tiny_backbone((32, 32, 3))
    for variable in backbone.weights:  # make the file's values unmistakable
        variable.assign(variable + 0.5)
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    expected = [keras.ops.convert_to_numpy(v) for v in backbone.weights]

    keras.utils.set_random_seed(7)
    loaded = build_model("eca_convnext_tiny", 3, (32, 32, 3), weights=path)
    keras.utils.set_random_seed(7)
    fresh = build_model("eca_convnext_tiny", 3, (32, 32, 3), weights=None)

    loaded_backbone = [v for v in loaded.weights if not v.path.startswith(("eca_stage_", "predictions"))]
    assert len(loaded_backbone) == len(expected)
    for variable, value in zip(loaded_backbone, expected):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value, err_msg=variable.path)
    for layer_name in ("eca_stage_0", "eca_stage_3", "predictions"):
        for mine, reference in zip(loaded.get_layer(layer_name).weights, fresh.get_layer(layer_name).weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(reference))
    with pytest.raises(WeightsError, match="does not exist"):
        build_model("eca_convnext_tiny", 3, (32, 32, 3), weights=str(tmp_path / "missing.weights.h5"))


@pytest.mark.slow
def test_same_model_runs_under_jax_backend(tmp_path):
    pytest.importorskip("jax")
    model = build_model("eca_convnext_tiny", 3, (32, 32, 3))
    pixels = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", pixels)
    np.save(tmp_path / "y.npy", model.predict(pixels, verbose=0))
    model.save(tmp_path / "m.keras")
    script = (
        "import json, numpy as np, keras, mineralnet\n"
        "built = mineralnet.build_model('eca_convnext_tiny', 3, (32, 32, 3))\n"
        f"m = keras.models.load_model(r'{tmp_path / 'm.keras'}')\n"
        f"p = np.asarray(m.predict(np.load(r'{tmp_path / 'x.npy'}'), verbose=0))\n"
        f"print(json.dumps([keras.backend.backend(), built.count_params(), "
        f"float(np.abs(p - np.load(r'{tmp_path / 'y.npy'}')).max())]))\n"
    )
    done = run_python(["-c", script], env={"KERAS_BACKEND": "jax"})
    backend, params, difference = json.loads(done.stdout.strip().splitlines()[-1])
    assert backend == "jax"
    assert params == model.count_params()
    assert difference < 1e-4

"""Every registry model honours the registry's contract (raw pixels in, trains, survives a .keras round trip,
exports to float32 TFLite with builtin ops only); GoogLeNet and ResNeXt50 match their papers' structure and
torchvision's parameter counts."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from mineralnet.export import convert
from mineralnet.models import WeightsError, build_model, list_models

# Szegedy et al. 2014, table 1: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) and the module's output.
GOOGLENET_TABLE_1 = {
    "3a": ((64, 96, 128, 16, 32, 32), 256),
    "3b": ((128, 128, 192, 32, 96, 64), 480),
    "4a": ((192, 96, 208, 16, 48, 64), 512),
    "4b": ((160, 112, 224, 24, 64, 64), 512),
    "4c": ((128, 128, 256, 24, 64, 64), 512),
    "4d": ((112, 144, 288, 32, 64, 64), 528),
    "4e": ((256, 160, 320, 32, 128, 128), 832),
    "5a": ((256, 160, 320, 32, 128, 128), 832),
    "5b": ((384, 192, 384, 48, 128, 128), 1024),
}
# torchvision's parameter counts at 1000 classes (googlenet without the auxiliary heads). torchvision counts
# trainable parameters only; Keras' count_params adds BatchNorm's moving mean and variance.
TORCHVISION_PARAMETERS = {"googlenet": 6_624_904, "resnext50": 25_028_904}


def trainable_count(model):
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)


def tflite_operators(model_bytes):
    """Operator names as the LiteRT runtime reads them (default delegates off, so none is hidden in one)."""
    interpreter = Interpreter(model_content=model_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return interpreter, {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_model_trains_round_trips_and_exports_without_flex(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(name, 3, (32, 32, 3))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")  # raw pixels
    # Eagerly: tracing and optimising a whole train graph costs ~20 s a model here; one eager step shows the
    # same thing (gradients reach the head). train() itself runs in graph mode in test_paper_tables.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True)
    head_before = keras.ops.convert_to_numpy(model.get_layer("predictions").kernel).copy()
    loss = model.train_on_batch(images, keras.utils.to_categorical([0, 1, 2, 0], 3))
    assert np.isfinite(loss)
    assert not np.array_equal(keras.ops.convert_to_numpy(model.get_layer("predictions").kernel), head_before)

    probabilities = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(images, training=False)), probabilities,
                               rtol=0, atol=1e-6)

    interpreter, operators = tflite_operators(convert(model, "float32", 32))
    assert not [op for op in operators if op.startswith("Flex")], operators
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images[:1])
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                               probabilities[:1], rtol=0, atol=1e-4)


def test_googlenet_matches_table_1_and_torchvision_parameter_count():
    model = build_model("googlenet", 1000)
    modules = [layer for layer in model.layers if isinstance(layer, keras.layers.Concatenate)]
    assert [layer.name for layer in modules] == [f"inception_{name}" for name in GOOGLENET_TABLE_1]
    for layer, (name, (widths, output)) in zip(modules, GOOGLENET_TABLE_1.items()):
        ones, reduce3, threes, reduce5, fives, pool_projection = widths
        branch_outputs = [int(tensor.shape[-1]) for tensor in layer.input]
        assert branch_outputs == [ones, threes, fives, pool_projection], name
        assert model.get_layer(f"inception_{name}_branch2_reduce_conv").filters == reduce3, name
        assert model.get_layer(f"inception_{name}_branch3_reduce_conv").filters == reduce5, name
        assert layer.output.shape[-1] == output, name
    spatial = {layer.name[-2:]: layer.output.shape[1] for layer in modules}
    assert spatial == {"3a": 28, "3b": 28, "4a": 14, "4b": 14, "4c": 14, "4d": 14, "4e": 14, "5a": 7, "5b": 7}
    assert len(model.outputs) == 1  # no auxiliary classifiers
    assert trainable_count(model) == pytest.approx(TORCHVISION_PARAMETERS["googlenet"], rel=0.02)
    assert model.count_params() == pytest.approx(TORCHVISION_PARAMETERS["googlenet"], rel=0.02)


def test_resnext50_has_32_groups_of_width_4_and_torchvision_parameter_count():
    model = build_model("resnext50", 1000)
    grouped = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.groups > 1]
    assert len(grouped) == 3 + 4 + 6 + 3  # one per bottleneck block
    assert {layer.groups for layer in grouped} == {32}
    first = model.get_layer("stage1_block0_2_conv")
    assert first in grouped and first.filters == 128
    assert tuple(first.kernel.shape) == (3, 3, 4, 128)  # each of the 32 groups sees 4 input channels
    for stage, (blocks, width) in enumerate(((3, 128), (4, 256), (6, 512), (3, 1024)), start=1):
        in_stage = [layer for layer in grouped if layer.name.startswith(f"stage{stage}_")]
        assert len(in_stage) == blocks and {layer.filters for layer in in_stage} == {width}, stage
    assert model.get_layer("avg_pool").input.shape[1:] == (7, 7, 2048)
    assert trainable_count(model) == pytest.approx(TORCHVISION_PARAMETERS["resnext50"], rel=0.02)
    assert model.count_params() == pytest.approx(TORCHVISION_PARAMETERS["resnext50"], rel=0.02)


@pytest.mark.parametrize("name", ["googlenet", "resnext50", "eca_resnet18"])
def test_written_models_reject_imagenet_weights(name):
    with pytest.raises(WeightsError, match=f"{name} has no ImageNet weights in Keras: pass --weights none"):
        build_model(name, 3, (32, 32, 3), weights="imagenet")


def backbone_of(model):
    """Image to pooled features: the part a backbone weights file describes."""
    return keras.Model(model.input, model.get_layer("predictions").input)


@pytest.mark.parametrize("name", ["googlenet", "vgg19"])
def test_backbone_weights_file_loads_exactly(name, tmp_path):
    if name == "vgg19":  # a file of Keras' own VGG19, e.g. converted ImageNet weights
        source = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    else:
        source = backbone_of(build_model(name, 3, (32, 32, 3)))
    for variable in source.weights:
        variable.assign(variable + 0.5)
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = backbone_of(build_model(name, 3, (32, 32, 3), weights=path))
    assert len(loaded.weights) == len(source.weights)
    for mine, reference in zip(loaded.weights, source.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(reference))

"""ECA-ResNet matches ECA-Net (Wang et al. 2020): ECA on the last BatchNorm of every residual branch, feeding the
block's add, and torchvision's ResNet parameter counts plus only the ECA kernels. The registry contract (trains a
step, .keras round trip, float32 TFLite without Flex ops) and the refusal of ImageNet weights are tested for
every model, these included, in test_baselines.py."""

import json

import keras
import numpy as np
import pytest

from mineralnet.layers import ECA, eca_kernel_size
from mineralnet.models import build_model, list_models
from mineralnet.models.ecaresnet import DEPTHS
from mineralnet.training import DEFAULTS, ConfigError, resolve_config
from mineralnet.training.advice import MEASURED, SMALL_DATA_RECIPE, recipe_flags, resolve_auto

from helpers import run_python
from test_baselines import backbone_of, trainable_count

# torchvision.models.resnet18/34/50(num_classes=1000): sum(p.numel() for p in model.parameters()); BatchNorm's
# weight and bias count, its running statistics do not (as Keras' trainable weights).
TORCHVISION_RESNET = {"eca_resnet18": 11_689_512, "eca_resnet34": 21_797_672, "eca_resnet50": 25_557_032}
BRANCH_CONVOLUTIONS = {"basic": 2, "bottleneck": 3}


def producer(tensor):
    return tensor._keras_history.operation


def inputs_of(layer):
    (node,) = layer._inbound_nodes
    return list(node.input_tensors)


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_eca_sits_after_the_last_bn_of_each_residual_branch_before_the_add(name):
    kind, depths = DEPTHS[name]
    model = build_model(name, 5, (32, 32, 3))
    ecas = [layer for layer in model.layers if isinstance(layer, ECA)]
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(ecas) == len(adds) == sum(depths)  # one per block
    for eca in ecas:
        (branch_end,) = inputs_of(eca)
        bn = producer(branch_end)
        assert isinstance(bn, keras.layers.BatchNormalization), (eca.name, bn)
        assert isinstance(producer(inputs_of(bn)[0]), keras.layers.Conv2D), eca.name
        (consumer,) = [node.operation for node in eca._outbound_nodes]
        assert isinstance(consumer, keras.layers.Add), (eca.name, consumer)
        (shortcut,) = [t for t in inputs_of(consumer) if producer(t) is not eca]
        # The block's input: the shortcut itself, or what its projection (1x1 conv + BN) reads.
        block_input = producer(shortcut)
        if isinstance(block_input, keras.layers.BatchNormalization):
            block_input = producer(inputs_of(producer(inputs_of(block_input)[0]))[0])
        # Walk the residual branch back from the ECA to the block input: the ECA follows its last convolution.
        convolutions, layer = 0, bn
        while layer is not block_input:
            convolutions += isinstance(layer, keras.layers.Conv2D)
            assert not isinstance(layer, (ECA, keras.layers.Add)), (eca.name, layer.name)
            layer = producer(inputs_of(layer)[0])
        assert convolutions == BRANCH_CONVOLUTIONS[kind], eca.name
        assert int(eca.kernel.shape[0]) == eca_kernel_size(int(branch_end.shape[-1])), eca.name


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_parameter_count_is_torchvision_resnet_plus_the_eca_kernels(name):
    model = build_model(name, 1000)
    eca_weights = sum(int(layer.kernel.shape[0]) for layer in model.layers if isinstance(layer, ECA))
    # k = 3 at 64 channels, 5 at 128-1024, 7 at 2048: ECA-Net50's "+80" (16 x 5) with the official rounding.
    assert eca_weights == {"eca_resnet18": 36, "eca_resnet34": 74, "eca_resnet50": 86}[name]
    assert trainable_count(model) == TORCHVISION_RESNET[name] + eca_weights
    assert model.get_layer("avg_pool").input.shape[1:] == (7, 7, 2048 if name == "eca_resnet50" else 512)


def test_backbone_weights_file_loads_exactly(tmp_path):
    source = backbone_of(build_model("eca_resnet18", 3, (32, 32, 3)))
    for variable in source.weights:
        variable.assign(variable + 0.5)
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = backbone_of(build_model("eca_resnet18", 4, (48, 48, 3), weights=path))  # another size and head
    for mine, reference in zip(loaded.weights, source.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(reference))


def auto_config(**values):
    return resolve_config(overrides={"data": "photos", "model": "auto", **values})


def test_auto_picks_the_measured_small_data_recipe_without_weights_and_keeps_explicit_values():
    config = auto_config(weights="none", epochs=3)
    config, line = resolve_auto(config, num_images=7 * 499, num_classes=7)
    assert config.model == SMALL_DATA_RECIPE["model"] and config.model in list_models()
    assert config.epochs == 3  # given explicitly: the recipe does not override it
    assert all(getattr(config, key) == value for key, value in SMALL_DATA_RECIPE.items() if key != "epochs")
    assert line.startswith("--model auto: 499 images per class on average, no pretrained weights -> ")
    assert MEASURED in line


@pytest.mark.parametrize("weights, per_class", [("none", 500), ("imagenet", 20)])
def test_auto_is_the_default_model_with_weights_or_enough_data(weights, per_class):
    config = auto_config(weights=weights)
    config, line = resolve_auto(config, num_images=7 * per_class, num_classes=7)
    assert line.startswith("--model auto:")
    assert config.model == DEFAULTS["model"] and config.image_size == DEFAULTS["image_size"]


def test_auto_refuses_a_weights_file_it_cannot_attribute(tmp_path):
    (tmp_path / "b.weights.h5").write_bytes(b"")
    with pytest.raises(ConfigError, match="--model auto cannot tell which model the weights file"):
        resolve_auto(auto_config(weights=str(tmp_path / "b.weights.h5")), 100, 2)


def test_named_model_on_small_data_from_scratch_gets_the_advice_and_keeps_its_settings():
    config = resolve_config(overrides={"data": "photos", "model": "eca_convnext_tiny", "weights": "none"})
    config, line = resolve_auto(config, num_images=60, num_classes=3)
    assert line.startswith("small data without pretrained weights (20 images per class on average")
    assert recipe_flags() in line
    assert config.model == "eca_convnext_tiny" and config.epochs == DEFAULTS["epochs"]
    assert resolve_auto(resolve_config(overrides={"data": "photos", "weights": "imagenet"}), 60, 3)[1] is None
    assert resolve_auto(resolve_config(overrides={"data": "photos", "weights": "none"}), 7000, 7)[1] is None


def test_train_py_model_auto_records_the_model_it_picked(demo_data, tmp_path):
    out = tmp_path / "run"
    done = run_python(["train.py", "--data", demo_data, "--out", str(out), "--model", "auto", "--weights", "none",
                       "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--no-evaluate"])
    assert "--model auto: 16 images per class on average, no pretrained weights -> " in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == SMALL_DATA_RECIPE["model"]
    assert (config["image_size"], config["epochs"]) == (32, 1)  # explicit flags win over the recipe
    assert config["label_smoothing"] == SMALL_DATA_RECIPE["label_smoothing"]
    assert config["warmup_epochs"] == 0  # the recipe's warm-up does not fit in 1 epoch
    assert keras.models.load_model(out / "model.keras").name == SMALL_DATA_RECIPE["model"]

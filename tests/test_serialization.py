"""Every Keras layer that mineralnet registers survives config, registered-name and .keras round trips."""

import keras
import numpy as np
import pytest

from mineralnet.layers import ECA
from mineralnet.models.applications import CaffePreprocessing
from mineralnet.models.resnext import GroupedConv2D

from helpers import run_serialization_test

LAYERS = {  # name: (a configured layer, channels of its input)
    "ECA": (lambda: ECA(kernel_size=5, name="eca"), 8),
    "CaffePreprocessing": (lambda: CaffePreprocessing(name="caffe"), 3),
    "GroupedConv2D": (lambda: GroupedConv2D(8, 3, groups=4, padding="same", name="grouped"), 8),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_registered_layer_round_trips(name):
    make, channels = LAYERS[name]
    inputs = np.random.default_rng(0).uniform(0, 255, (2, 6, 6, channels)).astype("float32")
    run_serialization_test(make(), inputs)


def test_every_registered_layer_is_covered():
    registered = {name.split(">", 1)[1] for name in keras.saving.get_custom_objects() if name.startswith("mineralnet>")}
    assert registered == set(LAYERS)

"""The small Conv-Pool-Conv-Pool-Dense network of the metallurgy CNN tutorial (shared/seeds/002): Conv 32 3x3,
max-pool, Conv 64 3x3, max-pool, flatten, Dense 64, softmax; sized to the input and class count. A fast
baseline, and the model the quick tests train."""

import keras

from mineralnet.models.head import classifier_head
from mineralnet.models.registry import register


@register("simple_cnn", "conv_0", feature_layer="flatten", any_size=False, local_weights=False,  # Flatten: fixed size
          reference="the metallurgy CNN tutorial (shared/seeds/002)")
def simple_cnn(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for index, width in enumerate((32, 64)):
        x = keras.layers.Conv2D(width, 3, activation="relu", name=f"conv_{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    return keras.Model(inputs, classifier_head(x, num_classes, dropout), name="simple_cnn")

"""The end every registry model shares: global pooling (the feature layer Grad-CAM explains), optional dropout and
a float32 softmax classifier, under fixed layer names. The registry's ModelInfo declares them and looks the layers
up (mineralnet.models.registry.feature_layer, classifier_layer) for training, Grad-CAM and the exporter; this
module only builds them and imports nothing of the registry. (Keras is imported inside the functions: the registry
reads the names without it.)"""

FEATURE_LAYER = "avg_pool"  # the global pooling whose input is the last stage's feature map
HEAD_DROPOUT = "head_dropout"
PREDICTIONS = "predictions"
CLASSIFIER = (HEAD_DROPOUT, PREDICTIONS)  # the layers classifier_head makes (dropout only when asked for)


def classifier_head(features, num_classes, dropout=0.0):
    """Optional dropout, then a float32 softmax layer (stable under mixed precision)."""
    import keras

    if dropout:
        features = keras.layers.Dropout(dropout, name=HEAD_DROPOUT)(features)
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=PREDICTIONS)(features)


def name_feature_layer(backbone):
    """Give the global pooling of a keras.applications backbone (built with pooling="avg", which names it
    `global_average_pooling2d_N` after how many such layers the process made before) the fixed FEATURE_LAYER name.
    Called by the builders once the backbone's weights are loaded, so weights files are saved and loaded as
    before. A weightless layer: renaming it changes nothing but the name."""
    import keras

    (pooling,) = [layer for layer in backbone.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    pooling.name = FEATURE_LAYER
    return backbone


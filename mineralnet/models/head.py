"""The end every registry model shares: global pooling (the feature layer Grad-CAM explains), optional dropout and
a float32 softmax classifier, under fixed layer names that the registry's ModelInfo declares and that training,
Grad-CAM and the exporter look up instead of guessing from layer types. (Keras is imported inside the
functions: the registry reads the names without it.)"""

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


def feature_layer(model):
    """The layer whose input is the feature map Grad-CAM explains and the QAT twin's head starts at: the layer
    named by the model's registry entry (mineralnet.models.model_info, found by the model's name).

    Fallback, by layer type: the last global pooling or flatten layer. Model files saved before the builders named
    their pooling layer (run directories of older versions: ConvNeXt and VGG19 had keras.applications'
    `global_average_pooling2d_N`) and models built outside the registry have no layer of the declared name.
    """
    import keras

    from mineralnet.models.registry import registered_info

    info = registered_info(model)
    names = {layer.name: layer for layer in model.layers}
    if info is not None and info.feature_layer in names:
        return names[info.feature_layer]
    kinds = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
    pooling = [layer for layer in model.layers if isinstance(layer, kinds)]
    return pooling[-1] if pooling else None

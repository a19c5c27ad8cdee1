"""Model registry. `build_model(name, num_classes, input_shape, weights)`; `list_models()` names them all;
`model_info(name)` says what each is (its layer names, input sizes, weights).

The models' modules (and with them TensorFlow) are imported on first use of a model (see registry._MODULES).
"""

from mineralnet.models.registry import (ModelInfo, WeightsError, build_model, classifier_layer, classifier_name,
                                        feature_layer, has_imagenet_weights, list_models, model_info, register,
                                        register_all, registered_info, stem_layer, takes_any_size)

__all__ = ["ModelInfo", "WeightsError", "build_model", "classifier_layer", "classifier_name", "feature_layer",
           "has_imagenet_weights", "list_models", "model_info", "register", "register_all", "registered_info",
           "stage_output_consumers", "stem_layer", "takes_any_size"]


def __getattr__(name):
    if name == "stage_output_consumers":
        from mineralnet.models.convnext import stage_output_consumers

        return stage_output_consumers
    raise AttributeError(f"module 'mineralnet.models' has no attribute '{name}'")

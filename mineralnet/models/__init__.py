"""Model registry. `build_model(name, num_classes, input_shape, weights)`; `list_models()` names them all.

The models' modules (and with them TensorFlow) are imported on first use of a model (see registry._MODULES).
"""

from mineralnet.models.registry import (WeightsError, build_model, has_imagenet_weights, list_models, register,
                                        register_all, takes_any_size)

__all__ = ["WeightsError", "build_model", "has_imagenet_weights", "list_models", "register", "register_all",
           "stage_output_consumers", "takes_any_size"]


def __getattr__(name):
    if name == "stage_output_consumers":
        from mineralnet.models.convnext import stage_output_consumers

        return stage_output_consumers
    raise AttributeError(f"module 'mineralnet.models' has no attribute '{name}'")

"""Model registry. `build_model(name, num_classes, input_shape, weights)`; `list_models()` names them all;
`model_info(name)` says what each is (its layer names, input sizes, weights)."""

from mineralnet.models import (applications, convnext, ecaresnet, googlenet, resnext,  # noqa: F401  (registers)
                               simple_cnn)
from mineralnet.models.convnext import stage_output_consumers
from mineralnet.models.head import feature_layer
from mineralnet.models.registry import (ModelInfo, WeightsError, build_model, has_imagenet_weights, list_models,
                                        model_info, register, registered_info, takes_any_size)

__all__ = ["ModelInfo", "WeightsError", "build_model", "feature_layer", "has_imagenet_weights", "list_models",
           "model_info", "register", "registered_info", "stage_output_consumers", "takes_any_size"]

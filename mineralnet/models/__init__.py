"""Model registry. `build_model(name, num_classes, input_shape, weights)`; `list_models()` names them all."""

from mineralnet.models import (applications, convnext, ecaresnet, googlenet, resnext,  # noqa: F401  (registers)
                               simple_cnn)
from mineralnet.models.convnext import stage_output_consumers
from mineralnet.models.registry import (WeightsError, build_model, has_imagenet_weights, list_models, register,
                                        takes_any_size)

__all__ = ["WeightsError", "build_model", "has_imagenet_weights", "list_models", "register", "stage_output_consumers",
           "takes_any_size"]

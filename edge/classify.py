"""The classify stage: class probabilities for all particles of a frame (a single item is one particle).

One interpreter call where the model's batch dimension is free (`batched`; export with `--batch dynamic`), else
one call per crop (edge/model.py Model.classify_batch). Each crop is resized with Pillow BILINEAR and quantised
exactly as a single picture is (edge/preprocess.py), so a crop gets the probabilities a photo of it would.
"""

import time

import numpy as np
from PIL import Image


class CropClassifier:
    def __init__(self, model):
        self.model = model
        self.batched = model.batch_free
        self.last_preprocess_s = 0.0  # resize + quantise of the last call's crops (its invoke time: model)

    def classify(self, crops):
        """(N, classes) float32 probabilities, in the order of `crops` (Pillow RGB images or RGB uint8 arrays)."""
        model = self.model
        start = time.perf_counter()
        if crops:
            tensors = np.concatenate([
                model.input_tensor(crop if isinstance(crop, Image.Image) else Image.fromarray(crop)) for crop in crops
            ])
        else:
            tensors = np.zeros((0, model.input_size, model.input_size, 3), model.input_dtype)
        self.last_preprocess_s = time.perf_counter() - start
        return model.classify_batch(tensors)

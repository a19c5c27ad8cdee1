"""The augmentation settings of a training run, a nested value of its config (kept free of TensorFlow, so that the
config and train.py's flags load without it; the augmentation itself is in mineralnet.data.pipeline)."""

from dataclasses import asdict, dataclass

CROP_SHIFT = 1 / 16  # the random crop shifts the image by up to this fraction of its side, each direction


@dataclass
class AugmentConfig:
    """Strengths of the training augmentation; zero turns a step off."""

    crop: bool = True  # random shift by up to CROP_SHIFT of the side (reflect padding), at evaluation's scale
    flip: bool = True
    rotation: float = 0.1  # fraction of a full turn, both directions (0.1 = +-36 degrees)
    brightness: float = 0.2  # fraction of the 0-255 range, both directions
    noise: float = 0.03  # Gaussian noise stddev as a fraction of the 0-255 range (0.03 = ~8 grey levels)
    # Off by default (and drawn from their own keys, so runs without them are unchanged): colour is a class cue
    # for minerals, so keep contrast/saturation mild (e.g. 0.1-0.2); zoom shows objects up to 1/(1 - zoom) larger.
    contrast: float = 0.0  # blend with the image's mean grey: factor drawn from 1 +- contrast
    saturation: float = 0.0  # blend with the pixel's grey: factor drawn from 1 +- saturation
    zoom: float = 0.0  # random square crop of side (1 - u) of the image, u drawn from [0, zoom), resized back

    @classmethod
    def from_dict(cls, values):
        unknown = set(values or {}) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}: use {sorted(cls.__dataclass_fields__)}.")
        config = cls(**(values or {}))
        for name in ("rotation", "brightness", "noise", "contrast", "saturation", "zoom"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"augmentation option '{name}' must be a number from 0 (off) to 1, got {value!r}.")
        if config.zoom > 0.5:
            raise ValueError(f"augmentation option 'zoom' must be at most 0.5 (objects up to 2x larger), got {config.zoom!r}.")
        return config

    def to_dict(self):
        return asdict(self)

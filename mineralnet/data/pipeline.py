"""tf.data input pipeline: parallel decode, resize, cache, shuffle, batch, prefetch; training-only augmentation
with Keras 3 preprocessing layers (the paper's random crop, rotation, brightness and noise, plus flips)."""

from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from mineralnet.data.images import load_image
from mineralnet.data.mixing import mix_batches

CROP_MARGIN = 8 / 7  # training images are decoded this much larger, then randomly cropped back (256 -> 224)


@dataclass
class AugmentConfig:
    """Strengths of the training augmentation; zero turns a step off."""

    crop: bool = True
    flip: bool = True
    rotation: float = 0.1  # fraction of a full turn, both directions (0.1 = +-36 degrees)
    brightness: float = 0.2  # fraction of the 0-255 range, both directions
    noise: float = 0.03  # Gaussian noise stddev as a fraction of the 0-255 range (0.03 = ~8 grey levels)

    @classmethod
    def from_dict(cls, values):
        unknown = set(values or {}) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}: use {sorted(cls.__dataclass_fields__)}.")
        return cls(**(values or {}))

    def to_dict(self):
        return asdict(self)


def augmentation_layers(image_size, config, seed=0):
    """The training augmentation as a Keras Sequential on raw 0-255 batches; returns None when all steps are off."""
    layers = []
    if config.crop:
        layers.append(keras.layers.RandomCrop(image_size, image_size, seed=seed))
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=seed + 1))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 2))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 3))
    if config.noise:
        # GaussianNoise takes stddev in [0, 1]: add it on the 0-1 scale.
        layers += [
            keras.layers.Rescaling(1 / 255),
            keras.layers.GaussianNoise(config.noise, seed=seed + 4),
            keras.layers.Rescaling(255),
        ]
    return keras.Sequential(layers, name="augmentation") if layers else None


def _decode(files, size):
    def load(path):
        return load_image(path.decode(), size)

    def decode_one(path):
        image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        image.set_shape((size, size, 3))
        return image

    return files.map(decode_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(files, labels, num_classes, image_size, batch_size, training=False, augment=None, seed=0,
                 cache=True, drop_remainder=False, mixup=0.0, cutmix=0.0):
    """Batches of (float32 raw-RGB images, one-hot labels) for `files` (absolute paths) and integer `labels`.

    Training decodes at CROP_MARGIN x size when cropping, caches decoded pixels, reshuffles every epoch, then
    augments each batch and mixes it (`mixup` / `cutmix`: Beta alphas, 0 = off); evaluation decodes straight
    to `image_size` (the export and edge contract).
    """
    augment = augment or AugmentConfig()
    crop = training and augment.crop
    decode_size = int(round(image_size * CROP_MARGIN)) if crop else image_size
    images = _decode(tf.data.Dataset.from_tensor_slices(np.asarray(files, dtype=str)), decode_size)
    targets = tf.data.Dataset.from_tensor_slices(keras.utils.to_categorical(labels, num_classes).astype("float32"))
    dataset = tf.data.Dataset.zip((images, targets))
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        layers = augmentation_layers(image_size, augment, seed)
        if layers is not None:
            dataset = dataset.map(
                lambda x, y: (tf.clip_by_value(layers(x, training=True), 0.0, 255.0), y),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        dataset = mix_batches(dataset, mixup, cutmix, seed)
    return dataset.prefetch(tf.data.AUTOTUNE)


def class_weights(labels, num_classes):
    """Inverse-frequency weights (mean 1 over samples) for imbalanced data: n / (k * n_c)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}

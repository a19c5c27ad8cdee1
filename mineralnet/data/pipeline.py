"""tf.data input pipeline: parallel decode, cache, per-epoch permutation, per-image augmentation, batch, prefetch.

Training randomness is *stateless*: the order of epoch e, the augmentation of the image at position i of that
epoch and the Mixup/CutMix draw of each batch are pure functions of (seed, e, i). So a resumed run continues
exactly where it stopped (epoch 3 after a resume sees what epoch 3 of an uninterrupted run sees), two runs with
the same seed see the same data, and nothing depends on the order in which parallel map calls happen to run.

Augmentation (the paper's random crop, rotation, brightness and Gaussian noise, plus flips) is drawn per image.
The crop keeps the scale that evaluation sees: the image is decoded at the model's input size (the whole photo
resized, exactly as evaluation, export and the edge runner decode it), reflect-padded and cropped back at a random
offset, i.e. a random shift. (Decoding larger and cropping, as before, made every object ~12 % larger in training
than at test time.) Optional, off by default: mild contrast/saturation jitter and a random zoom (a crop of up to
`zoom` of the side resized back, i.e. a deliberate change of scale).
"""

import math

from mineralnet._tf import import_tensorflow

import_tensorflow()  # before Keras, which imports TensorFlow: its start-up noise stays hidden
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mineralnet.data.augment import CROP_SHIFT, AugmentConfig  # noqa: E402,F401  (defined without TensorFlow)
from mineralnet.data.images import load_image  # noqa: E402
from mineralnet.data.mixing import mix_batches  # noqa: E402

# Independent random streams of one run: each is fold_in(seed, stream), then the epoch, then the position.
ORDER_STREAM, AUGMENT_STREAM, MIX_STREAM = 1, 2, 3


def stream_key(seed, stream, *indices):
    """The stateless RNG key of one random stream at (epoch, position, ...): fold_in of each index in turn."""
    key = tf.random.experimental.stateless_fold_in(tf.constant([0, int(seed)], tf.int64), stream)
    for index in indices:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(index, tf.int64))
    return key


def _rotate(image, angle):
    """Rotate a (H, W, C) float image by `angle` radians about its centre, reflecting at the border."""
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples the input at R^-1 (p - c) + c.
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")[0]


def augment_image(image, key, config):
    """One training image (H, W, 3) float32 in 0-255, augmented with the draws of `key` (stateless)."""
    size = image.shape[0]
    keys = tf.random.experimental.stateless_split(key, 6)
    if config.crop:
        pad = max(1, round(size * CROP_SHIFT))
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        image = tf.image.stateless_random_crop(image, (size, size, 3), seed=keys[0])
    # The newer options draw from keys folded in from `key` (not a wider split), so the draws of the six above,
    # and hence every earlier run's augmentation, stay exactly as they were.
    if config.zoom:
        zoom_keys = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, 6), 2)
        side = 1.0 - tf.random.stateless_uniform([], zoom_keys[0], 0.0, config.zoom)
        corner = tf.random.stateless_uniform([2], zoom_keys[1], 0.0, 1.0) * (1.0 - side)
        box = tf.concat([corner, corner + side], 0)[None]  # [y1, x1, y2, x2], normalised
        image = tf.image.crop_and_resize(image[None], box, [0], [size, size])[0]
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=keys[1])
        image = tf.image.stateless_random_flip_up_down(image, seed=keys[2])
    if config.rotation:
        turn = 2 * math.pi * config.rotation
        image = _rotate(image, tf.random.stateless_uniform([], keys[3], -turn, turn))
    if config.contrast or config.saturation:
        colour_keys = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, 7), 2)
        grey = tf.image.rgb_to_grayscale(image)
        if config.saturation:
            factor = tf.random.stateless_uniform([], colour_keys[0], 1 - config.saturation, 1 + config.saturation)
            image = grey + factor * (image - grey)
        if config.contrast:
            factor = tf.random.stateless_uniform([], colour_keys[1], 1 - config.contrast, 1 + config.contrast)
            mean = tf.reduce_mean(grey)
            image = mean + factor * (image - mean)
    if config.brightness:
        image = image + 255.0 * tf.random.stateless_uniform([], keys[4], -config.brightness, config.brightness)
    if config.noise:
        image = image + 255.0 * config.noise * tf.random.stateless_normal(tf.shape(image), keys[5])
    return tf.clip_by_value(image, 0.0, 255.0)


class DecodedImages:
    """Files decoded once at one size and fetched by index (an epoch's permutation needs random access, which
    tf.data's cache does not give). Parallel tf.data calls fill it during the first epoch; Pillow releases the
    GIL while it decodes."""

    def __init__(self, files, size, cache=True):
        self.files, self.size, self.cache = list(files), size, {} if cache else None

    def __call__(self, index):
        index = int(index)
        image = self.cache.get(index) if self.cache is not None else None
        if image is None:
            image = load_image(self.files[index], self.size)
            if self.cache is not None:
                self.cache[index] = image
        return image

    def dataset_map(self, index):
        image = tf.numpy_function(self, [index], tf.uint8, stateful=False)
        image.set_shape((self.size, self.size, 3))
        return image


def steps_per_epoch(num_files, batch_size, drop_remainder=False):
    return num_files // batch_size if drop_remainder else math.ceil(num_files / batch_size)


def make_dataset(files, labels, num_classes, image_size, batch_size, training=False, augment=None, seed=0,
                 cache=True, drop_remainder=False, mixup=0.0, cutmix=0.0, epochs=(0, 1), images=None):
    """Batches of (float32 raw-RGB images, one-hot labels) for `files` (absolute paths) and integer `labels`.

    Evaluation decodes straight to `image_size` (the export and edge contract), in file order. Training yields
    the batches of epochs `epochs[0]` to `epochs[1] - 1` one after the other (pass `steps_per_epoch(...)` to
    fit): each epoch a fresh seeded permutation, each image its own augmentation, then Mixup / CutMix per batch
    (`mixup` / `cutmix`: Beta alphas, 0 = off). `images`: a DecodedImages to share between calls (its decoded
    pixels are reused).
    """
    onehot = keras.utils.to_categorical(labels, num_classes).astype("float32")
    if not training:  # in file order; tf.data caches the decoded pixels, so no DecodedImages cache on top
        decoded = DecodedImages(files, image_size, cache=False)
        dataset = tf.data.Dataset.zip((
            tf.data.Dataset.range(len(files)).map(decoded.dataset_map, num_parallel_calls=tf.data.AUTOTUNE,
                                                  deterministic=True),
            tf.data.Dataset.from_tensor_slices(onehot)))
        dataset = dataset.cache() if cache else dataset
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.prefetch(tf.data.AUTOTUNE)

    augment = augment or AugmentConfig()
    images = images or DecodedImages(files, image_size, cache)
    count, onehot = len(files), tf.constant(onehot)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                         seed=stream_key(seed, ORDER_STREAM, epoch))

        def example(position, index):
            image = tf.cast(images.dataset_map(index), tf.float32)
            image = augment_image(image, stream_key(seed, AUGMENT_STREAM, epoch, position), augment)
            return image, tf.gather(onehot, index)

        batches = (tf.data.Dataset.from_tensor_slices(order).enumerate()
                   .map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .batch(batch_size, drop_remainder=drop_remainder))
        return mix_batches(batches, mixup, cutmix, stream_key(seed, MIX_STREAM, epoch))

    first, last = epochs
    dataset = tf.data.Dataset.range(first, last).flat_map(epoch_batches)
    total = (last - first) * steps_per_epoch(count, batch_size, drop_remainder)
    return dataset.apply(tf.data.experimental.assert_cardinality(total)).prefetch(tf.data.AUTOTUNE)


def class_weights(labels, num_classes):
    """Inverse-frequency weights (mean 1 over samples) for imbalanced data: n / (k * n_c)."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return {c: float(len(labels) / (num_classes * counts[c])) if counts[c] else 0.0 for c in range(num_classes)}

"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on training batches, as timm does them: one
Beta(alpha, alpha) draw per batch, each image mixed with the image at the mirrored batch position, labels
mixed in the same proportion (for CutMix: the pasted box's true share of the pixels)."""

import tensorflow as tf


def _beta(seed, alpha):
    """A Beta(alpha, alpha) sample from two Gamma(alpha) samples (TensorFlow has no stateless Beta)."""
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
    return gammas[0] / (gammas[0] + gammas[1])


def mixup(images, labels, lam):
    return lam * images + (1 - lam) * images[::-1], lam * labels + (1 - lam) * labels[::-1]


def cutmix(images, labels, lam, seed):
    """Paste a box of about (1 - lam) of the area from the mirrored image; the label weight is the box's exact
    share after clipping at the border."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    ratio = tf.sqrt(1.0 - lam)
    box_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    box_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    centre = tf.random.stateless_uniform([2], seed=seed, maxval=1.0)
    cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
    top, bottom = tf.clip_by_value(cy - box_h // 2, 0, height), tf.clip_by_value(cy + box_h // 2, 0, height)
    left, right = tf.clip_by_value(cx - box_w // 2, 0, width), tf.clip_by_value(cx + box_w // 2, 0, width)
    rows, cols = tf.range(height), tf.range(width)
    inside = ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None, :]
    mask = tf.cast(inside, images.dtype)[None, :, :, None]
    kept = 1.0 - tf.cast((bottom - top) * (right - left), tf.float32) / tf.cast(height * width, tf.float32)
    mixed = images * (1 - mask) + images[::-1] * mask
    return mixed, kept * labels + (1 - kept) * labels[::-1]


def mix_batches(dataset, mixup_alpha=0.0, cutmix_alpha=0.0, key=(0, 0)):
    """Mix every batch of (images, one-hot labels) by Mixup or CutMix; with both on, each batch picks one at
    random (even odds). Batch b draws from fold_in(key, b): `key` is the stateless RNG key of one epoch
    (mineralnet.data.pipeline gives each epoch its own), so the draws are reproducible and differ per epoch."""
    if not (mixup_alpha or cutmix_alpha):
        return dataset
    key = tf.cast(tf.convert_to_tensor(key), tf.int64)

    def mix(index, batch):
        images, labels = batch
        batch_key = tf.random.experimental.stateless_fold_in(key, index)
        draw = lambda salt: tf.random.experimental.stateless_fold_in(batch_key, salt)  # noqa: E731
        use_cutmix = bool(cutmix_alpha) and not mixup_alpha
        if mixup_alpha and cutmix_alpha:
            use_cutmix = tf.random.stateless_uniform([], seed=draw(1)) < 0.5
        lam_mixup = _beta(draw(2), mixup_alpha or 1.0)
        lam_cutmix = _beta(draw(3), cutmix_alpha or 1.0)
        return tf.cond(
            tf.convert_to_tensor(use_cutmix),
            lambda: cutmix(images, labels, lam_cutmix, draw(4)),
            lambda: mixup(images, labels, lam_mixup),
        )

    return dataset.enumerate().map(mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

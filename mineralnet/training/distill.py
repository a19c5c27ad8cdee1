"""Knowledge distillation (`train.py --teacher RUN`): the model learns the teacher's probabilities on each augmented
training image instead of the one-hot labels.

Why: without pretrained weights an average of several seeds (python -m mineralnet.ensemble) beats any one of them,
but costs their sum at every frame on the belt; one model of the same size, trained on the ensemble's answers,
keeps one model's cost (measured in issue 16's attempts a29-a31, benchmarks/results/minet/attempts.md). The teacher answers the very
image the student sees, after augmentation and Mixup/CutMix ("consistent" teaching, Beyer et al. 2022), so the
targets change with every view, as the one-hot labels never do.

The teacher must be a run of the same split: a teacher that trained on this run's test photos would pass on what
it learned from them, and the test accuracy would no longer be one. Same classes (in the same order) and image size
too, since it sees the student's training images as they are.
"""

import os

from mineralnet import rundir
from mineralnet.data.split import split_rows
from mineralnet.training.config import ConfigError


def load_teacher(config, classes, rows):
    """The teacher run's model, frozen, after checking that it can teach this run (ConfigError with the fix)."""
    missing = [name for name in rundir.FINISHED if not os.path.isfile(os.path.join(config.teacher, name))]
    if missing:
        raise ConfigError(f"--teacher '{config.teacher}' is not a finished run ({', '.join(missing)} missing): pass the "
                          "--out folder of a finished train.py run or of python -m mineralnet.ensemble.")
    teacher = rundir.Run(config.teacher)
    fix = f"train this run with --split {teacher.split_file} and --image-size {teacher.image_size}"
    if teacher.labels != list(classes):
        raise ConfigError(f"--teacher '{config.teacher}' knows the classes {teacher.labels}, this run {list(classes)}: "
                          "a teacher must be trained on the same class folders.")
    if split_rows(teacher.rows()) != split_rows(rows):
        raise ConfigError(f"--teacher '{config.teacher}' was trained on another split, which may hold this run's test "
                          f"photos: {fix}.")
    if teacher.image_size != config.image_size or config.progressive_sizes:
        raise ConfigError(f"--teacher '{config.teacher}' takes {teacher.image_size} px images, this run trains at "
                          f"{[*config.progressive_sizes, config.image_size]}: {fix} (no --progressive-sizes).")
    model = teacher.load_model()
    model.trainable = False
    return model


def teacher_targets(dataset, teacher):
    """`dataset` of (images, labels) batches with the labels replaced by the teacher's probabilities."""
    import tensorflow as tf

    return dataset.map(lambda images, labels: (images, tf.cast(teacher(images, training=False), labels.dtype)),
                       num_parallel_calls=tf.data.AUTOTUNE)

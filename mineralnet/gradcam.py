"""Grad-CAM (Selvaraju et al., 2017) on the last stage's output, the paper's fig. 6:
`python -m mineralnet.gradcam --run RUN --images FILES... --out DIR`.

Works for every registry model: the feature map explained is the input of the model's feature layer, the global
pooling (or flatten) layer its registry entry names (mineralnet.models.feature_layer), i.e. the last stage's
output after its residual add and attention. The score differentiated is the class *logit* y^c, the paper's
"score before the softmax", recomputed from the input of the model's classifier (the Dense softmax layer its
registry entry names, mineralnet.models.classifier_layer) and its kernel and bias: a confident prediction
saturates the softmax (p = 1.0 in float32 has a zero gradient), which would turn every map of the classes the
model is surest of into zeros.
"""

import argparse
import collections
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data import DataError, load_image, read_split
from mineralnet.data.split import check_content
from mineralnet.ensemble import ensemble_members
from mineralnet.errors import cli
from mineralnet.models import classifier_layer, classifier_name, feature_layer


def feature_map_tensor(model):
    """The last 4-D feature map of `model`: the input of its feature layer (see mineralnet.models.feature_layer)."""
    layer = feature_layer(model)
    if layer is None:
        raise rundir.RunError(f"model '{model.name}' has no global pooling or flatten layer to take Grad-CAM's map from.")
    return layer.input


def softmax_head(model):
    """The model's classifier (mineralnet.models.classifier_layer): the Dense softmax layer (float32) every registry
    model ends in, whose kernel and bias turn its input into the logits Grad-CAM differentiates."""
    import keras  # here, not at the top: `--help` answers without TensorFlow (the model brought Keras in already)

    head = classifier_layer(model)
    if (not isinstance(head, keras.layers.Dense) or getattr(head.activation, "__name__", None) != "softmax"
            or head.output is not model.outputs[0]):
        raise rundir.RunError(f"model '{model.name}' does not end in a Dense softmax layer named "
                              f"'{classifier_name(model)}': Grad-CAM needs its logits; build the model with "
                              "mineralnet.models.build_model.")
    return head


def gradcam_heatmaps(model, images, class_indices=None):
    """Heatmaps in [0, 1] at feature-map resolution, and the model's probabilities, for a batch of raw RGB images.

    The gradient is that of the explained class's logit (not its probability, which saturates): see the module
    docstring. class_indices: the class to explain per image; default the predicted one.
    """
    import keras
    import tensorflow as tf

    members = ensemble_members(model)
    if members:
        return _ensemble_heatmaps(model, members, images, class_indices)
    head = softmax_head(model)
    explainer = keras.Model(model.inputs, [feature_map_tensor(model), head.input, model.outputs[0]])

    @tf.function  # one trace for the whole batch instead of eager op-by-op (and retracing) calls
    def forward_backward(batch, chosen):
        with tf.GradientTape() as tape:
            features, head_input, probabilities = explainer(batch, training=False)
            logits = tf.matmul(tf.cast(head_input, tf.float32), tf.cast(head.kernel, tf.float32))
            if head.bias is not None:
                logits += tf.cast(head.bias, tf.float32)
            chosen = tf.where(chosen < 0, tf.argmax(probabilities, axis=1, output_type=tf.int32), chosen)
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        return features, probabilities, tape.gradient(score, features)

    images = tf.convert_to_tensor(np.asarray(images, dtype="float32"))
    chosen = np.full(len(images), -1) if class_indices is None else np.asarray(class_indices)
    features, probabilities, gradients = forward_backward(images, tf.constant(chosen, tf.int32))
    weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(features, tf.float32), axis=-1)).numpy()
    return _peak_normalised(cam), probabilities.numpy()


def _peak_normalised(cam):
    """Each heatmap divided by its maximum (all zero stays zero)."""
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def _ensemble_heatmaps(model, members, images, class_indices):
    """An ensemble's heatmap: the mean of its members' heatmaps for the class the ensemble predicts (or is asked
    to explain), each resized to the finest member's map."""
    import tensorflow as tf

    probabilities = model.predict(np.asarray(images, dtype="float32"), verbose=0)
    chosen = probabilities.argmax(axis=1) if class_indices is None else np.asarray(class_indices)
    maps = [gradcam_heatmaps(member, images, chosen)[0] for member in members]
    size = max(cam.shape[1:] for cam in maps)
    cam = np.mean([tf.image.resize(cam[..., None], size).numpy()[..., 0] for cam in maps], axis=0)
    return _peak_normalised(cam), probabilities


def overlay(image, heatmap, alpha=0.45):
    """The heatmap, resized to the image, blended over it with the jet colour map; uint8 RGB."""
    import matplotlib

    from PIL import Image

    size = image.shape[1], image.shape[0]
    resized = np.asarray(Image.fromarray(np.uint8(heatmap * 255)).resize(size, Image.BILINEAR)) / 255.0
    colours = matplotlib.colormaps["jet"](resized)[..., :3] * 255
    return np.uint8(np.clip((1 - alpha) * image + alpha * colours, 0, 255))


def output_names(paths):
    """`<stem>_gradcam.png` per input path, unique within the batch (compared case-insensitively, as on macOS and
    Windows disks): stems shared by several inputs (`a/0000.jpg`, `b/0000.jpg`) take their parent folder's name
    as a prefix (`a_0000_gradcam.png`), and names still equal after that (the same file twice) a `-2`, `-3`...
    suffix in input order. Deterministic in the input list, so a user can tell which overlay is which file."""
    stem = [os.path.splitext(os.path.basename(path))[0] for path in paths]
    shared = collections.Counter(s.lower() for s in stem)
    parent = [os.path.basename(os.path.dirname(os.path.abspath(path))) for path in paths]
    names = [f"{p}_{s}" if shared[s.lower()] > 1 and p else s for p, s in zip(parent, stem)]
    reserved, used, unique = {name.lower() for name in names}, set(), []
    for name in names:
        candidate, number = name, 1
        while candidate.lower() in used or (number > 1 and candidate.lower() in reserved):
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate.lower())
        unique.append(candidate + "_gradcam.png")
    return unique


def check_split_images(run, images):
    """DataError naming the class when an image given is a file of the run's split that no longer holds the content
    split.csv recorded (swapped class folders, an edited photo): its folder would name the wrong class beside the
    map. Images from elsewhere (new photos) are not checked; the split's other files are not read."""
    given = {os.path.realpath(path) for path in images}
    rows = read_split(run.split_file, run.train_config.data, check_files=False)
    check_content([row for row in rows if os.path.realpath(row["file"]) in given], run.split_file)


def gradcam_run(run, images, out_dir, model_path=None):
    """Write one `<name>_gradcam.png` (photo | overlay, predicted class in the title) per image of `run` (a
    rundir.Run or its path), named by output_names so that equal file names from different folders never overwrite
    each other; returns the paths."""
    from mineralnet.plots import plt, save_figure

    run = rundir.Run.of(run)
    missing = [path for path in images if not os.path.isfile(path)]
    if missing:
        raise DataError(f"image file '{missing[0]}' does not exist: pass existing files to --images.")
    check_split_images(run, images)
    model = run.load_model(model_path)
    pixels = np.stack([load_image(path, run.image_size) for path in images])
    heatmaps, probabilities = gradcam_heatmaps(model, pixels)
    written = []
    for path, name, image, heatmap, probs in zip(images, output_names(images), pixels, heatmaps, probabilities):
        figure, axes = plt.subplots(1, 2, figsize=(6, 3.3))
        axes[0].imshow(image)
        axes[1].imshow(overlay(image, heatmap))
        for axis in axes:
            axis.axis("off")
        best = int(np.argmax(probs))
        figure.suptitle(f"{os.path.basename(path)}: {run.labels[best]} ({probs[best]:.0%})", fontsize=9)
        target = os.path.join(out_dir, name)
        save_figure(figure, target)
        written.append(target)
    return written


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Grad-CAM overlays of a run's model on image files.")
    parser.add_argument("--run", required=True, help="run directory made by train.py")
    parser.add_argument("--images", nargs="+", required=True, help="image files to explain")
    parser.add_argument("--out", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--model", help="model file instead of RUN/model.keras")
    args = parser.parse_args(argv)
    for path in gradcam_run(args.run, args.images, args.out, args.model):
        print(path)


if __name__ == "__main__":
    sys.exit(main())

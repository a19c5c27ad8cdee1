"""edge/preprocess.py is the one copy of the preprocessing contract: training's mineralnet.data.load_image is made
of it and gives byte-identical model inputs, the runner refuses a sidecar that asks for another decode, and the
edge-only steps (camera frames, region of interest, quantisation) keep to it."""

import json

import numpy as np
import pytest
from PIL import Image

from edge import preprocess
from edge.model import ModelError, read_sidecar
from mineralnet.data import DECODE_METHOD, load_image

from helpers import write_decode_cases


def _write_images(directory):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    paths = {}
    paths["jpg"] = directory / "photo.jpg"
    Image.fromarray(rgb).save(paths["jpg"], quality=90)
    paths["rgba_png"] = directory / "alpha.png"
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (37, 53), dtype=np.uint8)])).save(paths["rgba_png"])
    paths["grey_png"] = directory / "grey.png"
    Image.fromarray(rgb[..., 0]).save(paths["grey_png"])
    paths["palette_png"] = directory / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(paths["palette_png"])
    paths["palette_transparent_gif"] = directory / "transparent.gif"
    palette = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(paths["palette_transparent_gif"], transparency=3)
    paths["png16"] = directory / "deep.png"
    Image.fromarray(rng.integers(0, 65536, (41, 29), dtype=np.uint16)).save(paths["png16"])
    paths["already_32"] = directory / "small.png"
    Image.fromarray(rgb[:32, :32]).save(paths["already_32"])
    good, _ = write_decode_cases(directory)  # EXIF orientations 1-8 and ICC-tagged RGB, RGBA, P, L, I;16, CMYK
    return {**paths, **good}


@pytest.mark.parametrize("size", [32, 64])
def test_same_bytes_as_training(tmp_path, size):
    for kind, path in _write_images(tmp_path).items():
        edge_pixels = preprocess.resize_rgb(preprocess.open_rgb(path), size)
        training_pixels = load_image(path, size)
        assert edge_pixels.dtype == np.uint8 and edge_pixels.shape == (size, size, 3), kind
        assert np.array_equal(edge_pixels, training_pixels), f"{kind} differs from mineralnet.data.load_image"


def test_same_files_unusable_as_in_training(tmp_path):
    """A file training's scan skips (its colour profile cannot be applied) is skipped by the runner too."""
    _, bad = write_decode_cases(tmp_path)
    for kind, path in bad.items():
        with pytest.raises(OSError, match="ICC colour profile") as edge_error:
            preprocess.open_rgb(path)
        with pytest.raises(OSError) as training_error:
            load_image(path, 32)
        assert str(edge_error.value) == str(training_error.value), kind
    assert preprocess.DECODE_METHOD == DECODE_METHOD


def test_dataset_images_match_training(tiny_export):
    for row in tiny_export["test_rows"][:5]:
        assert np.array_equal(preprocess.resize_rgb(preprocess.open_rgb(row["file"]), 32), load_image(row["file"], 32))


def test_sidecar_names_the_decode_and_a_runner_refuses_another(tmp_path, tiny_export):
    sidecar_path = tiny_export["float32"][: -len(".tflite")] + ".json"
    sidecar = read_sidecar(sidecar_path)
    assert sidecar["preprocessing"]["decode"] == preprocess.DECODE_METHOD
    other = {**sidecar, "preprocessing": {**sidecar["preprocessing"], "decode": "pillow-stored-pixels"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ModelError, match="asks for preprocessing decode='pillow-stored-pixels'"):
        read_sidecar(str(tmp_path / "other.json"))


def test_opencv_bgr_frame_goes_through_the_same_resize(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "frame.png")
    from_camera = preprocess.from_bgr(rgb[..., ::-1])
    assert from_camera.dtype == np.uint8 and np.array_equal(from_camera, rgb)
    assert np.array_equal(preprocess.resize_rgb(Image.fromarray(from_camera), 32),
                          load_image(tmp_path / "frame.png", 32))
    grey = preprocess.from_bgr(rgb[..., 0])
    assert grey.shape == (30, 40, 3) and np.array_equal(grey[..., 2], rgb[..., 0])
    bgra = np.concatenate([rgb[..., ::-1], np.full((30, 40, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(preprocess.from_bgr(bgra), rgb)


def test_a_frame_as_an_array_is_cropped_and_sized_as_its_pillow_image():
    """Camera frames are RGB arrays (no Pillow copy on a belt of many): the ROI crop and the size check give the
    pixels the Pillow image of the frame would (fails on 085c3b9: crop_roi needed a Pillow image)."""
    from edge.segment import FrameSize, SkipFrame

    pixels = np.arange(20 * 10 * 3, dtype=np.uint8).reshape(10, 20, 3)
    image = Image.fromarray(pixels)
    roi = (5, 2, 8, 4)
    assert np.array_equal(preprocess.crop_roi(pixels, roi), np.asarray(preprocess.crop_roi(image, roi)))
    with pytest.raises(ValueError, match="outside the 20x10 frame"):
        preprocess.crop_roi(pixels, (15, 0, 8, 4))
    size = FrameSize((20, 10), rescale=True)
    assert size.check(pixels, None) is pixels
    assert np.array_equal(size.check(pixels[:5, :10], None), np.asarray(size.check(image.crop((0, 0, 10, 5)), None)))
    with pytest.raises(SkipFrame, match="frame of 10x5 is not the 20x10"):
        FrameSize((20, 10)).check(pixels[:5, :10], None)


def test_roi_is_cropped_before_the_resize_and_checked():
    image = Image.fromarray(np.arange(20 * 10 * 3, dtype=np.uint8).reshape(10, 20, 3))
    cropped = preprocess.crop_roi(image, (5, 2, 8, 4))
    assert cropped.size == (8, 4) and np.array_equal(np.asarray(cropped), np.asarray(image)[2:6, 5:13])
    assert preprocess.crop_roi(image, None) is image
    with pytest.raises(ValueError, match="outside the 20x10 frame"):
        preprocess.crop_roi(image, (15, 0, 8, 4))


def test_quantisation():
    pixels = np.array([[[0, 1, 2], [127, 128, 255]]], dtype=np.uint8)
    identity = preprocess.quantize(pixels, np.uint8, 1.0, 0)
    assert identity.dtype == np.uint8 and identity.shape == (1, 1, 2, 3) and np.array_equal(identity[0], pixels)
    assert preprocess.quantize(pixels, np.float32, 0.0, 0).dtype == np.float32
    signed = preprocess.quantize(pixels, np.int8, 1.0, -128)
    assert signed.dtype == np.int8 and signed[0, 0, 1].tolist() == [-1, 0, 127]
    halved = preprocess.quantize(pixels, np.uint8, 2.0, 10)
    assert halved[0, 0, 1].tolist() == [74, 74, 138]  # round(x / 2 + 10), ties to even
    probabilities = preprocess.dequantize(np.array([0, 128, 255], dtype=np.uint8), 1 / 256, 0)
    assert np.allclose(probabilities, [0.0, 0.5, 255 / 256])
    assert preprocess.dequantize(np.array([-128, 0], dtype=np.int8), 1 / 256, -128).tolist() == [0.0, 0.5]

"""VGG19 and ResNet50 baselines (the paper's table 4) from `keras.applications`, with their caffe-style input
preprocessing moved inside the model so they take raw 0-255 RGB like every registry model."""

import keras
from keras import ops

from mineralnet.models.head import classifier_head, name_feature_layer
from mineralnet.models.registry import register

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # ImageNet channel means, BGR order


@keras.saving.register_keras_serializable(package="mineralnet")
class CaffePreprocessing(keras.layers.Layer):
    """RGB -> BGR, then ImageNet mean subtraction, no scaling: what `keras.applications.vgg19/resnet50
    .preprocess_input` do outside the model, and so what their ImageNet weights expect."""

    def call(self, inputs):
        bgr = ops.flip(ops.cast(inputs, self.compute_dtype), axis=-1)
        return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def build_application(application, name, num_classes, input_shape, weights=None, dropout=0.0):
    """`application` (a keras.applications constructor) without its top, average-pooled, behind
    CaffePreprocessing and before the project's head. The backbone is built on the preprocessed tensor, so its
    layers sit directly in the returned model (Grad-CAM finds its pooling layer by name) and `weights` ("imagenet"
    or a `.weights.h5` of this backbone) load into exactly those layers."""
    inputs = keras.Input(input_shape, name="image")
    backbone = name_feature_layer(application_backbone(application, inputs, weights))
    return keras.Model(inputs, classifier_head(backbone.output, num_classes, dropout), name=name)


def application_backbone(application, inputs, weights):
    """The average-pooled backbone on CaffePreprocessing(inputs): what a `--weights PATH` file of it holds."""
    return application(include_top=False, weights=weights, pooling="avg", input_shape=tuple(inputs.shape[1:]),
                       input_tensor=CaffePreprocessing(name="caffe_preprocessing")(inputs))


@register("vgg19", "block1_conv1", lambda shape: application_backbone(
    keras.applications.VGG19, keras.Input(shape, name="image"), "imagenet"),
    reference="Simonyan and Zisserman 2015, Very deep convolutional networks")
def vgg19(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """VGG19 (Simonyan and Zisserman, 2015): 16 convolutions, 5 max-pools, then GAP instead of the 4096-wide
    dense layers (20.0M backbone parameters)."""
    return build_application(keras.applications.VGG19, "vgg19", num_classes, input_shape, weights, dropout)


@register("resnet50", "conv1_conv", lambda shape: application_backbone(
    keras.applications.ResNet50, keras.Input(shape, name="image"), "imagenet"),
    reference="He et al. 2016, Deep residual learning")
def resnet50(num_classes, input_shape=(224, 224, 3), weights=None, dropout=0.0):
    """ResNet50 (He et al., 2016), Keras' v1 bottleneck network (23.6M backbone parameters)."""
    return build_application(keras.applications.ResNet50, "resnet50", num_classes, input_shape, weights, dropout)

"""The CIFAR ResNets of the distillation tables, as Keras models (issue #15).

He et al. (2016, section 4.2) built ResNets for 32x32 images from a 3x3
convolution and three stages of `n` basic blocks on 32x32, 16x16 and 8x8
maps, `depth = 6n + 2`. RepDistiller (Tian et al., CRD, 2020) and mdistiller
(DKD, 2022) use them with these widths:

- resnet8/14/20/32/44/56/110: stem 16, stages 16, 32, 64;
- resnet8x4, resnet32x4: stem 32, stages 64, 128, 256.

A basic block is `conv3x3-BN-ReLU-conv3x3-BN`, plus the shortcut, then ReLU;
the shortcut is a 1x1 convolution with BN where the width or the stride
changes (as in RepDistiller; He et al.'s CIFAR nets used parameter-free
zero padding instead: 2,752 parameters fewer in resnet20, whose 272,474
here round to the paper's 0.27M).
Convolutions have no bias. The model ends in global average pooling and a
Dense layer that outputs logits. Each stage's output is named `stage1`,
`stage2` and `stage3`, for feature losses.
"""

import keras

WIDTHS = {"standard": (16, 16, 32, 64), "x4": (32, 64, 128, 256)}


def _conv_bn(x, filters, kernel, stride, name):
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def basic_block(x, filters, stride, name):
    """`relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))`."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, f"{name}_shortcut")
    y = _conv_bn(x, filters, 3, stride, f"{name}_1")
    y = keras.layers.ReLU(name=f"{name}_1_relu")(y)
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(depth, widths="standard", num_classes=10, name=None):
    """The CIFAR ResNet of `depth = 6n + 2` layers, `widths` "standard" or "x4"."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(
            f"`depth` must be 6n + 2 >= 8 (8, 20, 56, ...), got {depth!r}."
        )
    if widths not in WIDTHS:
        raise ValueError(f"`widths` must be one of {sorted(WIDTHS)}, got {widths!r}.")
    stem, *stages = WIDTHS[widths]
    blocks = (depth - 2) // 6
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ReLU(name="stem_relu")(_conv_bn(inputs, stem, 3, 1, "stem"))
    for stage, filters in enumerate(stages, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = basic_block(x, filters, stride, f"stage{stage}_block{block + 1}")
        x = keras.layers.Identity(name=f"stage{stage}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    suffix = "x4" if widths == "x4" else ""
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}{suffix}")


def trainable_parameters(model):
    """Parameters as PyTorch and the papers count them (no BN moving stats)."""
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)

"""The CIFAR ResNets of benchmarks/cifar_models.py against the papers' sizes."""

import numpy as np
import pytest

from benchmarks.cifar_models import cifar_resnet, trainable_parameters

# The CIFAR-100 sizes (millions) that the distillation papers list for these
# models (resnet20 0.28M, resnet56 0.86M, resnet8x4 1.23M, resnet32x4 7.43M;
# their code, RepDistiller's, has 1x1-convolution shortcuts, as here), and
# two of He et al.'s CIFAR-10 sizes (2016, Table 6) that the 1x1 shortcuts
# do not change at this rounding (resnet32 and resnet56 come out 0.47M and
# 0.86M here against He's zero-padding 0.46M and 0.85M).
PUBLISHED = [
    (20, "standard", 100, 0.28),
    (56, "standard", 100, 0.86),
    (8, "x4", 100, 1.23),
    (32, "x4", 100, 7.43),
    (20, "standard", 10, 0.27),
    (110, "standard", 10, 1.7),
]


@pytest.mark.parametrize("depth, widths, classes, millions", PUBLISHED)
def test_parameter_counts_round_to_the_published_ones(depth, widths, classes, millions):
    model = cifar_resnet(depth, widths, num_classes=classes)
    digits = len(str(millions).split(".")[1])
    assert round(trainable_parameters(model) / 1e6, digits) == millions


def test_stages_have_the_papers_map_sizes_and_logits_come_out():
    model = cifar_resnet(8, "x4")
    shapes = [model.get_layer(f"stage{k}").output.shape[1:] for k in (1, 2, 3)]
    assert shapes == [(32, 32, 64), (16, 16, 128), (8, 8, 256)]
    logits = model(np.zeros((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize(
    "depth, widths", [(21, "standard"), (2, "standard"), (20, "x2")]
)
def test_bad_configurations_are_rejected(depth, widths):
    with pytest.raises(ValueError, match="depth|widths"):
        cifar_resnet(depth, widths)

"""A MobileNet-style depthwise-separable CNN for scikit-learn's handwritten digits, upsampled.

The pipeline spec (``pipeline.yaml``) builds it with ``factory: model:DepthwiseCNN``;
``train.py`` trains it and writes the checkpoint this module's class loads.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BLOCKS", "DepthwiseCNN", "IMAGE_SIZE", "NUM_CLASSES"]

#: Classes in ``load_digits`` (the digits 0-9).
NUM_CLASSES = 10
#: Height and width of the network's input: ``load_digits``' 8x8 images upsampled 4x (bilinear).
IMAGE_SIZE = 32

#: Depthwise-separable blocks as (output channels in ``width`` units, stride): MobileNet v1's
#: 13 blocks (Howard et al., 2017, Table 1), its last stride 2 dropped for a 32x32 input:
#: 32x32 -> 16x16 -> 8x8 -> 4x4.
BLOCKS: tuple[tuple[int, int], ...] = (
    (2, 1), (4, 2), (4, 1), (8, 2), (8, 1), (16, 2), (16, 1), (16, 1), (16, 1), (16, 1), (16, 1), (32, 1), (32, 1),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU6, MobileNet's unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class DepthwiseCNN(nn.Module):
    """MobileNet v1 in miniature: a 3x3 stem, then depthwise-separable blocks, each a 3x3
    depthwise conv and a 1x1 pointwise conv, every conv followed by BatchNorm and ReLU6;
    global average pooling and a linear head.

    Layers (``w`` = ``width``, the default :data:`BLOCKS`: 13 blocks)::

        pixels (batch, 1, 32, 32)
        stem  Conv 1->w 3x3 + BN + ReLU6                     -> (batch, w, 32, 32)
        13 x  [DWConv 3x3 (stride s) + BN + ReLU6,
               Conv 1x1 + BN + ReLU6]                         -> (batch, 32w, 4, 4)
        GlobalAveragePool, Flatten                           -> (batch, 32w)
        Linear 32w->num_classes                              -> logits (batch, num_classes)

    That is 27 convolutions and a Gemm in a chain without shortcuts, so a quantization error made
    early is carried through every later layer: the case where excluding a few "sensitive" nodes
    helps little.

    Exported in eval mode, BatchNorm is folded into the convolutions (by the exporter or by ONNX
    Runtime's graph optimizations); every op has a plain ONNX equivalent, with a dynamic batch dim.

    Args:
        width: channels of the stem (default 4: 4 ... 128 channels, about 59k parameters).
        num_classes: size of the output (default 10, the digits 0-9).
        blocks: (output channels in ``width`` units, stride) per block (default :data:`BLOCKS`).

    Raises:
        ValueError: ``width`` or ``num_classes`` is not positive, or ``blocks`` is empty.
    """

    def __init__(
        self, width: int = 4, num_classes: int = NUM_CLASSES, blocks: list[list[int]] | tuple[tuple[int, int], ...] = BLOCKS
    ) -> None:
        super().__init__()
        if width <= 0 or num_classes <= 0:
            raise ValueError(f"width and num_classes must be positive, got width={width}, num_classes={num_classes}")
        if not blocks:
            raise ValueError("blocks must name at least one (channels, stride) block")
        self.width = width
        self.num_classes = num_classes
        layers: list[nn.Module] = [_conv_bn(1, width, 3, 1, 1)]
        cin = width
        for mult, stride in blocks:
            cout = mult * width
            layers += [_conv_bn(cin, cin, 3, stride, cin), _conv_bn(cin, cout, 1, 1, 1)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of images.

        Args:
            pixels: float32 tensor of shape (batch, 1, 32, 32), pixel values in [0, 1]
                (``load_digits`` values divided by 16, upsampled 4x).

        Returns:
            logits: float32 tensor of shape (batch, num_classes), unnormalised.
        """
        return self.classifier(self.features(pixels))

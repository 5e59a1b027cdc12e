"""A small CNN for scikit-learn's 8x8 handwritten digits (``sklearn.datasets.load_digits``).

The pipeline spec (``pipeline.yaml``) builds it with ``factory: model:DigitsCNN``;
``train.py`` trains it and writes the checkpoint this module's class loads.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "NUM_CLASSES", "IMAGE_SIZE"]

#: Classes in ``load_digits`` (the digits 0-9).
NUM_CLASSES = 10
#: Height and width of a ``load_digits`` image, in pixels.
IMAGE_SIZE = 8


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions, one 2x2 max-pool, flatten and a linear head.

    Layers (``w`` = ``width``)::

        pixels  (batch, 1, 8, 8)
        Conv 1->w, 3x3, pad 1 + ReLU      -> (batch, w, 8, 8)
        Conv w->2w, 3x3, pad 1 + ReLU     -> (batch, 2w, 8, 8)
        MaxPool 2x2                       -> (batch, 2w, 4, 4)
        Conv 2w->4w, 3x3, pad 1 + ReLU    -> (batch, 4w, 4, 4)
        Flatten                           -> (batch, 64w)
        Linear 64w->num_classes           -> logits (batch, num_classes)

    The head sees the 4x4 layout (no global pooling): where a stroke is matters for digits.

    Every op has a plain ONNX equivalent, so the model exports with both
    ``torch.onnx.export(dynamo=True)`` and the legacy exporter, with a dynamic batch dim.

    Args:
        width: channels of the first convolution (default 16: 16/32/64 channels,
            about 34k parameters).
        num_classes: size of the output (default 10, the digits 0-9).

    Raises:
        ValueError: ``width`` or ``num_classes`` is not positive.
    """

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        if width <= 0 or num_classes <= 0:
            raise ValueError(f"width and num_classes must be positive, got width={width}, num_classes={num_classes}")
        self.width = width
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Flatten(1),
        )
        self.classifier = nn.Linear(4 * width * (IMAGE_SIZE // 2) ** 2, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class scores for a batch of images.

        Args:
            pixels: float32 tensor of shape (batch, 1, 8, 8), pixel values in [0, 1]
                (``load_digits`` values divided by 16).

        Returns:
            logits: float32 tensor of shape (batch, num_classes), unnormalised.
        """
        return self.classifier(self.features(pixels))

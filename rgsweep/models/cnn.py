"""The seed project's small CNN: three VGG-style conv blocks with batch norm and dropout."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """3 blocks of (conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> max-pool 2 -> dropout) at
    32/64/128 channels, then FC 128 -> ReLU -> dropout -> FC classes.

    A block pools only while the feature map is at least 2x2, so 8x8 digits go 8 -> 4 -> 2 -> 1 and
    any smaller input still works; the flatten size is worked out from the input shape.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = True,
        channels: tuple[int, ...] = (32, 64, 128),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        c_in, height, width = input_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            for c in (c_in, c_out):
                layers += [
                    nn.Conv2d(c, c_out, 3, padding=1, bias=not batch_norm),
                    nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                    nn.ReLU(inplace=True),
                ]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c_in * height * width, hidden)]
        head.append(nn.ReLU(inplace=True))
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))

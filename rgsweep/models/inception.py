"""The paper's small Inception for CIFAR-10 (Zhang et al. Appendix A, Figure 3)."""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """conv (with bias) -> BatchNorm without affine parameters (or nothing) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, batch_norm: bool) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2),
            nn.BatchNorm2d(c_out, affine=False) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class Inc(nn.Module):
    """concat(1x1 conv a, 3x3 conv b) along channels."""

    def __init__(self, c_in: int, a: int, b: int, batch_norm: bool) -> None:
        super().__init__()
        self.branch1 = ConvBlock(c_in, a, 1, 1, batch_norm)
        self.branch3 = ConvBlock(c_in, b, 3, 1, batch_norm)
        self.out_channels = a + b

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class Down(nn.Module):
    """concat(3x3 stride 2 conv c, 3x3 stride 2 max-pool).

    Both branches pad by 1 (TF 'SAME' sizes), so 28 -> 14 -> 7 and the final grid is the
    paper's 7x7 mean pool; without padding 28 -> 13 -> 6 would not fit that pool.
    """

    def __init__(self, c_in: int, c: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(c_in, c, 3, 2, batch_norm)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c + c_in

    def forward(self, x):
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


class Inception(nn.Module):
    """conv3x3 96; Inc(32,32), Inc(32,48), Down(80); Inc(112,48), Inc(96,64), Inc(80,80), Inc(48,96),
    Down(96); Inc(176,160), Inc(176,160); global mean pool; FC classes.

    1,649,402 parameters on 3x28x28 with 10 classes, with or without batch norm (its affine=False
    layers have no parameters). Adaptive average pooling stands in for the 7x7 mean pool so any
    input size works; on 28x28 it is exactly that pool.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBlock(input_shape[0], 96, 3, 1, batch_norm)]
        channels = 96
        plan = [
            ("inc", 32, 32), ("inc", 32, 48), ("down", 80),
            ("inc", 112, 48), ("inc", 96, 64), ("inc", 80, 80), ("inc", 48, 96), ("down", 96),
            ("inc", 176, 160), ("inc", 176, 160),
        ]  # fmt: skip
        for kind, *sizes in plan:
            block = Inc if kind == "inc" else Down
            module = block(channels, *sizes, batch_norm)
            layers.append(module)
            channels = module.out_channels
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(channels, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))

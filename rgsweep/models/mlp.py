"""Multilayer perceptrons: the paper's MLP 1x512 and MLP 3x512 (and any width/depth)."""

from __future__ import annotations

import math

from torch import nn


class MLP(nn.Module):
    """Flatten -> depth x [Linear -> (BatchNorm1d) -> ReLU -> (Dropout)] -> Linear(num_classes).

    With dropout 0 and no batch norm this is exactly the paper's fully connected net:
    2352-512-10 has 1,209,866 parameters, 2352-512-512-512-10 has 1,735,178.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        width: int = 512,
        depth: int = 1,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 0:
            raise ValueError(f"MLP needs width >= 1 and depth >= 0, got width={width}, depth={depth}")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

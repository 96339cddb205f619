"""ResNet-18 (CIFAR variant) and Wide ResNet 28-1 (pre-activation), as in pluskid's reproduction."""

from __future__ import annotations

from torch import nn


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        # Without batch norm the convs get their bias back (BN would have cancelled it).
        bias = not batch_norm
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(c_out, batch_norm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm(c_out, batch_norm)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """3x3 stem conv (no max-pool), stages of 2 BasicBlocks at 64/128/256/512 channels, strides 1/2/2/2,
    global average pool, FC. 11,173,962 parameters for 10 classes (any input size)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(input_shape[0], 64, 3, padding=1, bias=not batch_norm),
            _norm(64, batch_norm),
            nn.ReLU(inplace=True),
        ]
        c_in = 64
        for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(c_in, c_out, stride, batch_norm), BasicBlock(c_out, c_out, 1, batch_norm)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(c_in, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))


class PreActBlock(nn.Module):
    """Wide ResNet block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus shortcut (1x1 conv when
    the shape changes, taken from the pre-activated input as in Zagoruyko & Komodakis)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, batch_norm: bool) -> None:
        super().__init__()
        bias = not batch_norm
        self.bn1 = _norm(c_in, batch_norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = _norm(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.relu = nn.ReLU()  # not in place: the pre-activation feeds the shortcut too
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        residual = x if self.shortcut is None else self.shortcut(pre)
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv 16, three stages of (depth-4)/6 pre-activation blocks at 16k/32k/64k
    channels (strides 1/2/2), BN-ReLU, global average pool, FC. WRN-28-1 has 369,498 parameters for
    10 classes (any input size)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        depth: int = 28,
        widen: int = 1,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=not batch_norm)]
        c_in = 16
        for c_out, stride in [(16 * widen, 1), (32 * widen, 2), (64 * widen, 2)]:
            for i in range(blocks):
                layers.append(PreActBlock(c_in, c_out, stride if i == 0 else 1, dropout, batch_norm))
                c_in = c_out
        layers += [_norm(c_in, batch_norm), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.features(x))

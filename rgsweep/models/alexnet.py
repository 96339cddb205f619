"""The paper's small AlexNet (the TensorFlow CIFAR-10 tutorial model, Zhang et al. Appendix A)."""

from __future__ import annotations

from torch import nn


def _pooled(size: int) -> int:
    # max-pool 3x3, stride 2, padding 1 (TF 'SAME'): 28 -> 14 -> 7, 32 -> 16 -> 8, 8 -> 4 -> 2.
    return (size + 2 - 3) // 2 + 1


def _lrn() -> nn.LocalResponseNorm:
    # TF's local_response_normalization(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75).
    # TF multiplies the window's sum of squares by alpha; PyTorch divides alpha by the window
    # size first, so the same normalisation needs alpha = 0.001/9 * 9 here.
    return nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)


class AlexNet(nn.Module):
    """2x (conv 5x5 64ch 'same' -> ReLU -> max-pool 3x3 s2 -> LRN), FC 384, FC 192, linear classes.

    1,387,786 parameters on 3x28x28 with 10 classes. The flatten size follows the input shape.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape

        def block(c_in: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, 64, 5, padding=2)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(64))
            return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1), _lrn()]

        self.features = nn.Sequential(*block(channels), *block(64))
        flat = 64 * _pooled(_pooled(height)) * _pooled(_pooled(width))

        def fc(n_in: int, n_out: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(n_in, n_out)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            return layers

        self.classifier = nn.Sequential(
            nn.Flatten(), *fc(flat, 384), *fc(384, 192), nn.Linear(192, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))

"""The paper's small AlexNet (the TensorFlow CIFAR-10 tutorial model, Zhang et al. Appendix A)."""

from __future__ import annotations

import torch
from torch import nn


def _pooled(size: int) -> int:
    # max-pool 3x3, stride 2, padding 1 (TF 'SAME'): 28 -> 14 -> 7, 32 -> 16 -> 8, 8 -> 4 -> 2.
    return (size + 2 - 3) // 2 + 1


class _BandedLRN(torch.autograd.Function):
    """y = x * (k + x^2 @ band)^-beta over the last (channel) dim, with a hand-written backward.

    Autograd through the same ops would save more tensors and evaluate a second fractional power in
    the backward; this keeps one: dx = g * d - 2 * beta * x * ((g * y / s) @ band^T). Written in the
    forward/setup_context form so that torch.func (vmap, as trial packing uses) works with it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, band: torch.Tensor, k: float, beta: float) -> tuple[torch.Tensor, ...]:
        s = (x.square() @ band).add_(k)
        if beta == 0.75:  # the paper's beta: s^-3/4 = r * sqrt(r) with r = 1/sqrt(s), 1.3x faster than pow
            r = s.rsqrt()
            d = r.mul_(r.sqrt())
        else:
            d = s.pow(-beta)
        return x * d, s, d

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, band, _, beta = inputs
        y, s, d = output
        ctx.save_for_backward(x, band, s, d, y)
        ctx.beta = beta
        ctx.mark_non_differentiable(s, d)

    @staticmethod
    def backward(ctx, g: torch.Tensor, _gs, _gd):
        x, band, s, d, y = ctx.saved_tensors
        # The 2*beta factor rides on the (tiny) band matrix and the last product is one addcmul: two
        # fewer passes over the activations than the textbook order.
        u = (g * y).div_(s) @ (band.t() * (2 * ctx.beta))
        return torch.addcmul(g * d, u, x, value=-1), None, None, None


class LocalResponseNorm(nn.LocalResponseNorm):
    """nn.LocalResponseNorm, computed as one banded matmul over channels (same function, ~3x faster).

    torch's version pads and average-pools a 5-D view of x^2 (several full passes each way); here the
    window sums are x^2 @ band with band[j, c] = alpha/size where channel j is in c's window, which
    runs at matmul speed on channels_last activations (the layout the trainer uses for convnets).
    """

    def _band(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        band = getattr(self, "_band_cache", None)
        if band is None or band.shape[0] != channels or band.device != like.device or band.dtype != like.dtype:
            i = torch.arange(channels, device=like.device)
            d = i[:, None] - i[None, :]  # source channel j minus output channel c
            inside = (d >= -(self.size // 2)) & (d <= (self.size - 1) // 2)  # torch's padding of the window
            band = inside.to(like.dtype) * (self.alpha / self.size)
            self._band_cache = band
        return band

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x.movedim(1, -1)  # [N, H, W, C]: a free view, contiguous for channels_last inputs
        return _BandedLRN.apply(xc, self._band(xc.shape[-1], xc), self.k, self.beta)[0].movedim(-1, 1)


def _lrn() -> nn.LocalResponseNorm:
    # TF's local_response_normalization(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75).
    # TF multiplies the window's sum of squares by alpha; PyTorch divides alpha by the window
    # size first, so the same normalisation needs alpha = 0.001/9 * 9 here.
    return LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)


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
            # Pool before ReLU: the same function (ReLU is monotonic, so it commutes with max) and the
            # same gradients, with the ReLU on a quarter of the activations.
            return layers + [nn.MaxPool2d(3, stride=2, padding=1), nn.ReLU(inplace=True), _lrn()]

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

"""The model registry: exact parameter counts, any input shape, switches, torch.func compatibility."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from rgsweep.models import MODELS, build_model, count_params, is_convnet, model_names

CIFAR_CROP = (3, 28, 28)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        # The paper's Appendix A counts (3x28x28, 10 classes): exact checks of faithful implementations.
        ("mlp1x512", 1_209_866),
        ("mlp3x512", 1_735_178),
        ("alexnet", 1_387_786),
        ("inception", 1_649_402),
        ("inception-nobn", 1_649_402),
        # Standard CIFAR ResNet-18 and WRN-28-1 counts; these pools are global, so any input size.
        ("resnet18", 11_173_962),
        ("wrn28-1", 369_498),
    ],
)
def test_parameter_counts(arch: str, expected: int) -> None:
    assert count_params(build_model(arch, CIFAR_CROP, 10)) == expected


def test_registry_names_and_convnet_flag() -> None:
    assert model_names() == [
        "mlp1x512", "mlp3x512", "alexnet", "inception", "inception-nobn", "resnet18", "wrn28-1", "cnn",
    ]  # fmt: skip
    assert [n for n in model_names() if not is_convnet(n)] == ["mlp1x512", "mlp3x512"]
    assert all(spec.description for spec in MODELS.values())


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize(("shape", "num_classes"), [((1, 8, 8), 10), ((1, 28, 28), 4), ((3, 32, 32), 10)])
def test_forward_backward_any_shape(arch: str, shape: tuple[int, int, int], num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, shape, num_classes, dropout=0.1)
    model.train()
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.arange(4) % num_classes).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.inference_mode():
        assert model(x[:1]).shape == (1, num_classes)


def _has(model: nn.Module, kind: type[nn.Module]) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def test_batch_norm_switch() -> None:
    with_bn = build_model("inception", CIFAR_CROP, 10)
    bns = [m for m in with_bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(bn.affine for bn in bns)  # the paper's BN has no learned scale or shift
    assert not _has(build_model("inception-nobn", CIFAR_CROP, 10), nn.modules.batchnorm._BatchNorm)
    assert not _has(build_model("inception", CIFAR_CROP, 10, batch_norm=False), nn.BatchNorm2d)
    assert _has(build_model("inception-nobn", CIFAR_CROP, 10, batch_norm=True), nn.BatchNorm2d)
    for arch in ("resnet18", "wrn28-1", "cnn"):
        assert _has(build_model(arch, CIFAR_CROP, 10), nn.BatchNorm2d), arch
        assert not _has(build_model(arch, CIFAR_CROP, 10, batch_norm=False), nn.BatchNorm2d), arch
    assert not _has(build_model("mlp1x512", CIFAR_CROP, 10), nn.BatchNorm1d)
    assert _has(build_model("mlp1x512", CIFAR_CROP, 10, batch_norm=True), nn.BatchNorm1d)
    assert not _has(build_model("alexnet", CIFAR_CROP, 10), nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("arch", list(MODELS))
def test_dropout_switch(arch: str) -> None:
    assert not _has(build_model(arch, (1, 8, 8), 10), nn.Dropout)
    model = build_model(arch, (1, 8, 8), 10, dropout=0.3)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(d.p == 0.3 for d in dropouts)


def test_mlp_width_and_depth() -> None:
    # 64 inputs -> 3 hidden layers of 100 -> 4 classes.
    model = build_model("mlp1x512", (1, 8, 8), 4, width=100, depth=3)
    assert count_params(model) == (64 * 100 + 100) + 2 * (100 * 100 + 100) + (100 * 4 + 4)
    assert count_params(build_model("mlp3x512", (1, 8, 8), 4, depth=1)) == count_params(
        build_model("mlp1x512", (1, 8, 8), 4)
    )
    with pytest.raises(ValueError, match="MLPs only"):
        build_model("alexnet", CIFAR_CROP, 10, width=256)


def test_unknown_arch_lists_allowed_names() -> None:
    with pytest.raises(ValueError, match="vgg16") as info:
        build_model("vgg16", CIFAR_CROP, 10)
    assert all(name in str(info.value) for name in model_names())
    with pytest.raises(ValueError, match="allowed"):
        is_convnet("vgg16")


@pytest.mark.parametrize("bad", [{"input_shape": (28, 28)}, {"num_classes": 0}, {"dropout": 1.0}])
def test_bad_arguments(bad: dict) -> None:
    kwargs = {"input_shape": CIFAR_CROP, "num_classes": 10, **bad}
    with pytest.raises(ValueError):
        build_model("cnn", kwargs.pop("input_shape"), kwargs.pop("num_classes"), **kwargs)


@pytest.mark.parametrize("arch", ["alexnet", "inception", "wrn28-1", "cnn"])
def test_vmap_over_stacked_models_matches_each_model(arch: str) -> None:
    # Training same-architecture trials together: stacked parameters + vmap must equal one-by-one.
    torch.manual_seed(0)
    models = [build_model(arch, (1, 8, 8), 10) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 5, 1, 8, 8)

    def run(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    base.eval()
    for m in models:
        m.eval()
    with torch.no_grad():
        stacked = vmap(run)(params, buffers, x)
        single = torch.stack([m(xi) for m, xi in zip(models, x)])
    torch.testing.assert_close(stacked, single, rtol=1e-4, atol=1e-5)

    base.train()
    before = {k: b.clone() for k, b in buffers.items() if k.endswith("running_mean")}
    vmap(run, randomness="different")(params, buffers, x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for k, p in params.items() if "weight" in k)
    # Batch norm's running statistics update per stacked model, in the stacked buffers.
    assert all(not torch.equal(buffers[k], b) for k, b in before.items())


@pytest.mark.parametrize("arch", ["alexnet", "inception", "resnet18", "cnn"])
def test_channels_last_and_bf16_autocast(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (3, 8, 8), 10).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        channels_last = model(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_banded_lrn_matches_torchs_local_response_norm(beta):
    # rgsweep's LRN (a banded matmul with a hand-written backward, r*sqrt(r) for beta 0.75) against
    # torch's stock module: the same function and the same input gradient, in float64.
    from torch import nn

    from rgsweep.models.alexnet import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.randn(4, 64, 7, 5, dtype=torch.float64) * 3).contiguous(memory_format=torch.channels_last)
    ours, stock = LocalResponseNorm(9, 0.001, beta, 1.0), nn.LocalResponseNorm(9, 0.001, beta, 1.0)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), stock(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)

"""The CUDA path (`pytest -m cuda`; `make gpu-check` runs these on a GPU machine): bf16 autocast,
channels_last, the paper's crop on the device, no host sync in the hot loop, packed trials on CUDA.
Every test here skips, with the reason, where torch sees no CUDA device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from datafiles import write_image_folder

from rgsweep.config import make_config
from rgsweep.data.augment import Augment
from rgsweep.models import build_model
from rgsweep.packed import train_packed
from rgsweep.train import autocast_for, make_optimizer, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (make gpu-check)")]


def test_a_training_step_with_the_paper_crop_never_syncs():
    # The hot loop as train() runs it for a convnet: index a device batch, crop + whiten + flip + erase,
    # channels_last, bf16 autocast, backward, fused SGD. Under sync debug mode "error" any host read raises.
    dev = torch.device("cuda")
    x, y = torch.rand(512, 3, 32, 32, device=dev), torch.randint(0, 10, (512,), device=dev)
    model = build_model("cnn", (3, 28, 28), 10).to(dev).to(memory_format=torch.channels_last)
    opt = make_optimizer(make_config({"lr": 0.01}), model.parameters(), dev)
    aug, g = Augment(["crop", "flip", "erase"]), torch.Generator(device=dev).manual_seed(0)

    def step() -> torch.Tensor:
        idx = torch.randperm(512, device=dev, generator=g)[:128]
        xb = aug(x[idx], g).contiguous(memory_format=torch.channels_last)
        with autocast_for(dev):
            loss = F.cross_entropy(model(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step()  # cuDNN autotuning and allocator warm-up may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss.item())


def test_train_on_cuda_with_the_paper_crop_and_a_test_schedule(tmp_path):
    write_image_folder(tmp_path, n_train=20, n_test=5, size=(32, 32))
    cfg = make_config({"dataset": f"imagefolder:{tmp_path}", "arch": "cnn", "augment": ["crop", "flip"],
                       "device": "cuda", "epochs": 3, "fit_threshold": None, "eval_every": 2, "batch_size": 16})
    reports: list[dict] = []
    s = train(cfg, reports.append)
    assert s["device"].startswith("cuda") and math.isfinite(s["final_train_loss"])
    assert [m["epoch"] for m in reports if "test_acc" in m] == [2, 3]


def test_packed_trials_on_cuda_match_one_by_one():
    base = {"dataset": "synthetic", "arch": "mlp1x512", "device": "cuda", "epochs": 3, "fit_threshold": None,
            "lr": 0.05, "preprocess": "standard"}
    cfgs = [make_config({**base, **t}) for t in ({"seed": 0}, {"seed": 1, "label_noise": 0.5},
                                                 {"seed": 2, "augment": ["padcrop", "flip"]})]
    alone = [train(c) for c in cfgs]
    packed = train_packed(cfgs)
    for a, p in zip(alone, packed):
        assert isinstance(p, dict) and p["pack_size"] == 3 and p["device"].startswith("cuda")
        # bf16 autocast: batched and single kernels round differently.
        assert p["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=0.05, abs=0.01)
        assert p["final_train_acc"] == pytest.approx(a["final_train_acc"], abs=0.03)

"""Typed config validation: every bad input names the key and the allowed values."""

from __future__ import annotations

import pytest

from rgsweep.config import ConfigError, TrialConfig, make_config


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({"label_noise": 1.5}, ["label_noise", "1.5", "less than or equal to 1"]),
        ({"lr": -0.1}, ["lr", "greater than 0"]),
        ({"epochs": 0}, ["epochs", "greater than or equal to 1"]),
        ({"arch": "vgg16"}, ["arch", "vgg16", "alexnet", "inception", "mlp1x512"]),
        ({"dataset": "imagenet"}, ["dataset", "imagenet", "cifar10", "digits", "imagefolder:<path>"]),
        ({"corruption": "blur"}, ["corruption", "blur", "shuffled_pixels", "random_pixels", "gaussian"]),
        ({"augment": ["crop", "mixup"]}, ["augment", "mixup", "crop", "flip", "perspective"]),
        ({"optimizer": "lbfgs"}, ["optimizer", "sgd", "adam"]),
        ({"lr_schedule": "linear"}, ["lr_schedule", "exponential", "cosine", "plateau"]),
        ({"learning_rate": 0.1}, ["unknown key 'learning_rate'", "allowed keys", "lr", "label_noise"]),
        ({"early_stopping": 3}, ["early_stopping", "val_fraction"]),
        ({"device": "tpu"}, ["device", "cpu", "cuda"]),
        # The paper's crop is defined with the paper's whitening and on the image's own pixels (test_crop.py).
        ({"augment": ["crop"], "preprocess": "standard"}, ["augment", "preprocess: paper", "'standard'", "padcrop"]),
        ({"augment": ["crop"], "preprocess": "none"}, ["augment", "preprocess: paper", "padcrop"]),
        ({"augment": ["crop"], "corruption": "shuffled_pixels"}, ["augment", "shuffled_pixels", "padcrop"]),
        ({"augment": "crop,flip", "corruption": "random_pixels"}, ["augment", "random_pixels", "padcrop"]),
        ({"augment": ["crop", "padcrop"]}, ["augment", "crop", "padcrop", "one of them"]),
        ({"eval_every": 0}, ["eval_every", "greater than or equal to 1", "'auto'"]),
        ({"eval_every": "sometimes"}, ["eval_every", "'sometimes'", "'auto'"]),
        ({"eval_every": True}, ["eval_every", "'auto'"]),
    ],
)
def test_bad_values_name_key_and_allowed(values, needles):
    with pytest.raises(ConfigError) as e:
        make_config(values)
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_defaults_and_augment_string_forms():
    assert make_config({}).arch == "mlp1x512"
    assert make_config({"augment": "crop,flip"}).augment == ["crop", "flip"]
    assert make_config({"augment": "none"}).augment == []
    assert make_config({"dataset": "imagefolder:/tmp/x"}).dataset == "imagefolder:/tmp/x"


def test_trial_key_is_stable_and_ignores_location():
    a = make_config({"arch": "alexnet", "label_noise": 0.4})
    b = make_config({"label_noise": 0.4, "arch": "alexnet", "data_dir": "/elsewhere", "device": "cpu"})
    c = make_config({"arch": "alexnet", "label_noise": 0.6})
    assert a.key() == b.key()
    assert a.key() != c.key()
    assert len(a.key()) == 16


def test_flat_params_cover_every_field_as_strings():
    cfg = make_config({"augment": ["crop", "flip"], "weight_decay": 5e-4})
    flat = cfg.flat_params()
    assert set(flat) == set(TrialConfig.model_fields)
    assert flat["augment"] == "crop,flip"
    assert flat["weight_decay"] == "0.0005"
    assert all(isinstance(v, str) for v in flat.values())

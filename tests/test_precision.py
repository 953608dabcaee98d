"""densetune/precision.py: auto | bf16 | fp32 resolved for a device, with the reason, announced once."""

from __future__ import annotations

import argparse
import types

import pytest
import torch

from densetune import precision as prec
from densetune.precision import (
    PRECISIONS,
    add_precision_argument,
    announce,
    cpu_bf16_features,
    resolve_precision,
    set_inference_precision,
)


def test_forced_choices_are_kept_with_their_reason():
    fp32 = resolve_precision("fp32", "cpu")
    assert (fp32.name, fp32.bf16, fp32.device_type, fp32.reason) == ("fp32", False, "cpu", "asked for")
    bf16 = resolve_precision("bf16", torch.device("cpu"))
    assert bf16.bf16 and bf16.name == "bf16"
    with bf16.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with fp32.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="fp16.*auto, bf16, fp32"):
        resolve_precision("fp16", "cpu")
    assert PRECISIONS == ("auto", "bf16", "fp32")


def test_auto_on_this_cpu_follows_torchs_feature_detection():
    """bf16 exactly when torch reports AVX512-BF16 or AMX-BF16; the reason names what was found."""
    features = cpu_bf16_features()
    auto = resolve_precision("auto", "cpu")
    assert auto.bf16 == bool(features)
    assert auto.reason.startswith("auto: ")
    for feature in features:
        assert feature in auto.reason
    if not features:
        assert "fp32" in str(auto) and "neither AVX512-BF16 nor AMX-BF16" in auto.reason


@pytest.mark.parametrize(
    ("caps", "expect", "words"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, "bf16", "AVX512-BF16"),
        ({"avx512_bf16": False, "amx_bf16": True}, "bf16", "AMX-BF16"),
        ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, "fp32", "emulated, slower than fp32"),
    ],
)
def test_auto_on_other_cpus(monkeypatch, caps, expect, words):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    auto = resolve_precision("auto", "cpu")
    assert auto.name == expect and words in auto.reason
    if expect == "fp32":
        forced = resolve_precision("bf16", "cpu")
        assert forced.bf16 and "slow" in forced.reason  # forcing is allowed, and says what it costs


def test_auto_without_a_gpu_or_on_other_devices_is_fp32():
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cuda").name == "fp32"
    meta = resolve_precision("auto", "meta")
    assert meta.name == "fp32" and "meta" in meta.reason


def test_announced_once_per_process(capsys, monkeypatch):
    monkeypatch.setattr(prec, "_announced", set())
    choice = resolve_precision("fp32", "cpu")
    announce(choice)
    announce(choice)
    printed = capsys.readouterr().out
    assert printed == "precision fp32 on cpu: asked for\n"


def test_inference_precision_is_set_on_the_model(monkeypatch, capsys):
    monkeypatch.setattr(prec, "_announced", set())
    model = torch.nn.Linear(2, 2)
    assert set_inference_precision(model, None) is None and not hasattr(model, prec.INFERENCE_ATTR)
    choice = set_inference_precision(model, "bf16")
    assert getattr(model, prec.INFERENCE_ATTR) is choice and choice.bf16
    assert "precision bf16 autocast on cpu" in capsys.readouterr().out
    stub = types.SimpleNamespace()  # an encoder without parameters: resolved for the CPU
    assert set_inference_precision(stub, "fp32").device_type == "cpu"
    # a model loaded for inference only: bf16 weights instead of autocast, said so
    owned = torch.nn.Linear(2, 2)
    choice = set_inference_precision(owned, "bf16", owned=True)
    assert choice.weights and owned.weight.dtype == torch.bfloat16 and not hasattr(owned, prec.INFERENCE_ATTR)
    assert "precision bf16 weights on cpu: asked for" in capsys.readouterr().out
    kept = torch.nn.Linear(2, 2)
    assert (
        not set_inference_precision(kept, "fp32", owned=True).weights and kept.weight.dtype == torch.float32
    )


def test_the_cli_argument():
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])

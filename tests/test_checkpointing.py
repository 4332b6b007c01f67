"""Activation checkpointing (``ViT.set_grad_checkpointing``): every mode gives the loss and
gradients of the plain model, recomputes only the blocks it names, stops a block's
recomputation before a frozen fc2, and rejects bad values with a ConfigError."""

from __future__ import annotations

import pytest
import torch
from test_methods import TINY, T, randomise_new_weights
from torch import nn

from vidadapt import ViT
from vidadapt.config import config_from_dict
from vidadapt.errors import ConfigError
from vidadapt.models import create_model

METHODS = {"full": {}, "aim": {}, "st_adapter": {}}  # AIM: temporal, spatial and joint sites


def build(method: str, checkpointing: bool | int):
    torch.manual_seed(0)
    vit = ViT(TINY)
    vit.set_grad_checkpointing(checkpointing)
    model = create_model(method, backbone=vit, num_classes=5, num_frames=T, **METHODS[method])
    randomise_new_weights(model)
    return model.train()  # drop-path and dropout on: recomputation must replay their masks


def loss_and_grads(model: nn.Module, video: torch.Tensor, labels: torch.Tensor):
    torch.manual_seed(3)  # the same dropout / drop-path draws for every model
    loss = nn.functional.cross_entropy(model(video), labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("checkpointing", [True, 1])
def test_same_loss_and_gradients_as_without(method, checkpointing):
    video, labels = torch.randn(2, T, 3, 32, 32), torch.tensor([1, 4])
    loss, grads = loss_and_grads(build(method, False), video, labels)
    ckpt_loss, ckpt_grads = loss_and_grads(build(method, checkpointing), video, labels)
    torch.testing.assert_close(ckpt_loss, loss, rtol=0, atol=1e-6)
    assert ckpt_grads.keys() == grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=0, atol=1e-6, msg=name)


def mlp_calls(checkpointing: bool | int) -> dict[str, int]:
    """How often each block's fc1 and fc2 run in one AIM training step."""
    model = build("aim", checkpointing)
    calls: dict[str, int] = {}

    def count(module: nn.Module, inputs, output) -> None:
        calls[names[module]] += 1

    names = {m: n for n, m in model.backbone.named_modules() if n.endswith(("mlp.fc1", "mlp.fc2"))}
    for module, name in names.items():
        calls[name] = 0
        module.register_forward_hook(count)
    model(torch.randn(1, T, 3, 32, 32)).sum().backward()
    return calls


def test_recomputation_covers_the_named_blocks_and_stops_before_a_frozen_fc2():
    # fc1 runs again for the GELU's saved input; fc2 (frozen: saves nothing) is never rerun.
    assert mlp_calls(False) == dict.fromkeys(
        ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"], 1
    )
    assert mlp_calls(True) == {"blocks.0.mlp.fc1": 2, "blocks.0.mlp.fc2": 1,
                               "blocks.1.mlp.fc1": 2, "blocks.1.mlp.fc2": 1}
    assert mlp_calls(1) == {"blocks.0.mlp.fc1": 2, "blocks.0.mlp.fc2": 1,
                            "blocks.1.mlp.fc1": 1, "blocks.1.mlp.fc2": 1}


@pytest.mark.parametrize("value, blocks", [(False, 0), (True, 2), (0, 0), (1, 1), (2, 2)])
def test_number_of_checkpointed_blocks(value, blocks):
    vit = ViT(TINY)
    vit.set_grad_checkpointing(value)
    assert vit.checkpointed_blocks == blocks


@pytest.mark.parametrize("value", [3, -1, 1.5, "all", None])
def test_bad_values_are_config_errors(value):
    vit = ViT(TINY)
    with pytest.raises(ConfigError) as error:
        vit.set_grad_checkpointing(value)
    assert str(error.value) == (f"grad_checkpointing is {value!r}; use true, false or a number "
                                "of blocks from 0 to 2")


@pytest.mark.parametrize("value", [True, False, 0, 11])
def test_config_key_takes_a_switch_or_a_block_count(value):
    cfg = config_from_dict({"train": {"grad_checkpointing": value}})
    assert type(cfg.train.grad_checkpointing) is type(value)  # 0 stays 0, not False
    assert cfg.train.grad_checkpointing == value


@pytest.mark.parametrize("value, message", [
    (-1, "x.yaml: train.grad_checkpointing: -1 is not allowed; use true, false or a number of "
         "blocks >= 0"),
    (1.5, "x.yaml: train.grad_checkpointing: expected bool or int, got 1.5"),
    ("all", "x.yaml: train.grad_checkpointing: expected bool or int, got 'all'"),
])
def test_config_key_rejects_other_values(value, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"train": {"grad_checkpointing": value}}, default_origin="x.yaml")
    assert str(error.value) == message

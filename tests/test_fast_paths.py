"""The GPU-lean formulations compute what the plain ones did: outputs and gradients to 1e-5.

Each reference below is the straightforward form that the upstream code uses (and vidadapt used
before): AIM's temporal attention on tokens transposed to ``[B*N, T, D]`` through the fused
attention kernel, ST-Adapter's depthwise ``nn.Conv3d`` on ``[B, C, T, h, w]``, LoRA's update as
one product per adapted slice scattered into the output.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidadapt.backbones.fused import QuickGELU, quick_gelu, quick_gelu_reference
from vidadapt.backbones.vit import Attention, TokenLayout, ViT, ViTConfig
from vidadapt.methods.aim import TemporalAdaptation
from vidadapt.methods.layers import temporal_depthwise_conv
from vidadapt.methods.lora import LoRALinear
from vidadapt.methods.st_adapter import STAdapter
from vidadapt.models import create_model

TINY = ViTConfig(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=128)


def randomize(module: nn.Module) -> None:
    """Non-zero values everywhere, so zero-initialised adapter layers are exercised too."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.2)


def assert_same_outputs_and_grads(fast, reference, inputs, params) -> None:
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fast(*inputs)
    grads = torch.autograd.grad(out.square().sum(), [*inputs, *params])
    ref_inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ref_out = reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), [*ref_inputs, *params])
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def transposed_temporal_adaptation(module: TemporalAdaptation, block, x, layout):
    """AIM's temporal branch as the official code orders it: regroup to one sequence of T
    tokens per (clip, token position), attend with the block's own attention, regroup back."""
    BT, N, D = x.shape
    B, T = layout.batch, layout.frames
    xt = x.view(B, T, N, D).transpose(1, 2).reshape(B * N, T, D)  # [B*N, T, D]
    h = block.norm1(xt)
    if module.adapter_in is not None:
        h = module.adapter_in(h)
    h = module.adapter(block.attn(h, layout))  # [B*N, T, D]
    h = h.view(B, N, T, D).transpose(1, 2).reshape(BT, N, D)  # [B*T, N, D]
    return x + module.drop_path(h)


@pytest.mark.parametrize("num_tadapter", [1, 2])
def test_temporal_attention_without_transposes_matches_the_transposed_form(num_tadapter):
    vit = ViT(TINY)
    module = TemporalAdaptation(TINY.width, 16, num_tadapter, drop_path=0.0)
    randomize(module)
    block = vit.blocks[0]
    layout = TokenLayout(batch=2, frames=5, grid=(4, 4))
    x = torch.randn(2 * 5, 17, TINY.width)
    assert_same_outputs_and_grads(
        lambda t: module(t, block, layout),
        lambda t: transposed_temporal_adaptation(module, block, t, layout),
        [x], list(module.parameters()))


def test_temporal_attention_with_prefixes_matches_the_transposed_form():
    """Prefix tuning's key/value sites see one sequence per (clip, token) in both forms."""
    model = create_model("prefix+aim", backbone=ViT(TINY), num_classes=3, num_frames=4,
                         prefix={"length": 3})
    randomize(model)
    vit = model.backbone
    video = torch.randn(2, 4, 3, 32, 32)

    def reference(v):
        originals = {}
        for block in vit.blocks:
            site = block.pre_attn[0]
            originals[site] = site.forward
            site.forward = (lambda t, b, lay, s=site:
                            transposed_temporal_adaptation(s, b, t, lay))
        try:
            return model(v)
        finally:
            for site, forward in originals.items():
                site.forward = forward

    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    assert_same_outputs_and_grads(model, reference, [video], params)


def test_forward_frames_attends_across_frames_only():
    """Token n of frame t sees token n of the clip's other frames and nothing else."""
    torch.manual_seed(0)
    attn = Attention(32, heads=2)
    layout = TokenLayout(batch=2, frames=3, grid=(2, 2))
    x = torch.randn(6, 5, 32, requires_grad=True)
    out = attn.forward_frames(x, layout)
    grad = torch.autograd.grad(out[4, 2].sum(), x)[0]  # clip 1, frame 1, token 2
    touched = grad.abs().sum(-1) > 0  # [B*T, N]
    expected = torch.zeros(6, 5, dtype=torch.bool)
    expected[3:6, 2] = True
    assert torch.equal(touched, expected)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_temporal_depthwise_conv_matches_conv3d(k):
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 6, (k, 1, 1), padding=(k // 2, 0, 0), groups=6)
    z = torch.randn(2, 7, 4, 6)  # [B, T, P, C]

    def reference(t):
        out = conv(t.permute(0, 3, 1, 2).unsqueeze(-1))  # [B, C, T, P, 1]
        return out.squeeze(-1).permute(0, 2, 3, 1)  # [B, T, P, C]

    assert_same_outputs_and_grads(lambda t: temporal_depthwise_conv(t, conv.weight, conv.bias),
                                  reference, [z], [conv.weight, conv.bias])


def test_temporal_depthwise_conv_matches_evls_conv1d():
    """EVL's Conv1d over each token's frames, run on ``[B*N, D, T]`` as upstream does."""
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(2, 5, 3, 8)  # [B, T, N, D]

    def reference(t):
        seq = t.permute(0, 2, 3, 1).reshape(6, 8, 5)  # [B*N, D, T]
        return conv(seq).view(2, 3, 8, 5).permute(0, 3, 1, 2)  # [B, T, N, D]

    assert_same_outputs_and_grads(lambda t: temporal_depthwise_conv(t, conv.weight, conv.bias),
                                  reference, [x], [conv.weight, conv.bias])


@pytest.mark.parametrize("kernel", [(3, 1, 1), (3, 3, 3)])
def test_st_adapter_matches_its_conv3d_form(kernel):
    adapter = STAdapter(TINY.width, 24, kernel)
    randomize(adapter)
    layout = TokenLayout(batch=2, frames=4, grid=(3, 3))
    x = torch.randn(8, 10, TINY.width)

    def reference(t):
        patches = t[:, 1:]
        z = adapter.down(patches).view(2, 4, 3, 3, 24).permute(0, 4, 1, 2, 3)
        z = adapter.conv(z).permute(0, 2, 3, 4, 1).reshape(8, 9, 24)
        return torch.cat([t[:, :1], patches + adapter.up(z)], dim=1)

    assert_same_outputs_and_grads(lambda t: adapter(t, None, layout), reference, [x],
                                  list(adapter.parameters()))


def test_st_adapter_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        create_model("st_adapter", backbone=ViT(TINY), num_classes=3, kernel=(2, 1, 1))


@pytest.mark.parametrize("groups,slots", [(3, (0, 2)), (3, (1,)), (3, (0, 1, 2)), (1, (0,))])
def test_lora_single_matmul_update_matches_per_slice_updates(groups, slots):
    torch.manual_seed(0)
    base = nn.Linear(16, 12 * groups)
    layer = LoRALinear(base, rank=4, alpha=8.0, groups=groups, slots=slots)
    randomize(layer)
    x = torch.randn(3, 5, 16)

    def reference(t):
        out = layer.base(t).unflatten(-1, (groups, -1))  # [..., groups, w]
        for i, slot in enumerate(slots):
            delta = t @ layer.lora_A[i].T @ layer.lora_B[i].T * layer.scale  # [..., w]
            out = out.index_add(-2, torch.tensor([slot]), delta.unsqueeze(-2))
        return out.flatten(-2)

    assert_same_outputs_and_grads(layer, reference, [x], [layer.lora_A, layer.lora_B])
    expected = torch.zeros(12 * groups, 16)
    for i, slot in enumerate(slots):
        expected[12 * slot:12 * (slot + 1)] = layer.lora_B[i] @ layer.lora_A[i]
    torch.testing.assert_close(layer.update_matrix() @ layer.lora_A.flatten(0, 1), expected)


def test_fast_paths_agree_on_a_whole_model():
    """A whole AIM + ST-Adapter + LoRA stack against the same stack on the plain forms."""
    model = create_model("lora+aim+st_adapter", backbone=ViT(TINY), num_classes=5, num_frames=4)
    randomize(model)
    model.eval()
    video = torch.randn(2, 4, 3, 32, 32)
    logits = model(video)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    # Same numbers with the temporal branch rerouted through the transposed form.
    sites = [b.pre_attn[0] for b in model.backbone.blocks]
    for site in sites:
        site.forward = (lambda t, b, lay, s=site: transposed_temporal_adaptation(s, b, t, lay))
    torch.testing.assert_close(model(video), logits, atol=1e-5, rtol=1e-5)


def test_quick_gelu_matches_clips_expression_and_keeps_only_its_input():
    """The autograd function (its torch-operations path; CUDA runs the same formulas fused)."""
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = QuickGELU.apply(x)
    assert torch.equal(out, quick_gelu_reference(x))
    assert len(saved) == 1 and saved[0] is x  # the expression keeps x and the sigmoid
    grad = torch.randn_like(x)
    ours = torch.autograd.grad(out, x, grad)[0]
    theirs = torch.autograd.grad(quick_gelu_reference(x), x, grad)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(QuickGELU.apply, (x[:2, :3].detach().requires_grad_(),))
    assert torch.equal(quick_gelu(x), quick_gelu_reference(x))  # on CPU: the plain expression

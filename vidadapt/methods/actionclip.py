"""ActionCLIP: A New Paradigm for Video Action Recognition (Wang et al., 2021).

Video-text matching. Text: the class name in one of 16 templates ("a photo of action {}",
``clip.prompts.TEMPLATES["actionclip"]``), a random one while training, all of them at test
time with their softmaxes averaged. Video: frame embeddings fused over time after the image
tower (mean, a shift-initialised depthwise Conv1D, an LSTM or, by default, a 6-block
transformer with a frame position embedding; all but the mean are residual), optionally with a
temporal shift of 1/8 of the patch-token channels forward and 1/8 backward before every block.
Loss: symmetric KL divergence between the softmax of the batch's video-text similarities and
the batch's ground-truth matrix (1 where two clips share a label). The official recipe also
fine-tunes both towers (``tune_image_encoder`` / ``tune_text_encoder``) (docs/methods.md).

Differences from the official code: a training step draws one template per class (the paper:
per clip; the same whenever a batch holds each class once), so a tuned text tower encodes C
prompts per step; the target rows are the ground truth normalised to sum to 1 (the official
code uses softmax(10 * ground truth), within e^-10 of it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vit import TokenLayout
from ..checkpoints.convert import OPENAI_RULES, convert_openai_clip, rename_keys
from ..clip.prompts import resolve_templates
from ..clip.text import convert_openai_text
from ..clip.towers import ClipOptions
from ..errors import CheckpointError, ConfigError
from .base import Method, MethodParts, Target
from .efficient_prompt import TemporalTransformer
from .text_head import TextHead

FUSIONS = ("mean", "conv1d", "lstm", "transformer")


@dataclass
class ActionCLIPConfig(ClipOptions):
    templates: str | list[str] = field(default="actionclip")  # a set in clip.prompts.TEMPLATES
    # or a list of templates with one "{}" each; one drawn per class and step in training
    fusion: str = "transformer"  # frame embeddings → clip: mean, conv1d, lstm or transformer
    fusion_layers: int = 6  # transformer fusion: blocks (heads = E / 64)
    temporal_shift: bool = False  # shift patch-token channels over time before every block
    shift_div: int = 8  # 1/shift_div of the channels shift forward, as many backward
    tune_image_encoder: bool = False  # fine-tune the image tower (the official recipe does)
    tune_text_encoder: bool = False  # fine-tune the text tower (the official recipe does)

    def __post_init__(self) -> None:
        super().__post_init__()
        resolve_templates(self.templates)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion {self.fusion!r}: use one of {FUSIONS}")
        if self.fusion_layers < 1 or self.shift_div < 2:
            raise ConfigError(f"fusion_layers must be >= 1 and shift_div >= 2; got "
                              f"{self.fusion_layers} and {self.shift_div}")

    def vocabulary_texts(self) -> list[str]:
        return resolve_templates(self.templates)


class ActionCLIPPrompts(nn.Module):
    """Class embeddings from templates: ``[C, E]`` for one random template per class while
    training, ``[1, C, K, E]`` (all K templates, softmax-averaged by the classifier) in eval."""

    def __init__(self, templates: str | Sequence[str], tune_text: bool) -> None:
        super().__init__()
        self.templates = resolve_templates(templates)
        self.tune_text = tune_text
        self.stale = False  # a tuned text tower trained since the embeddings were computed
        self.names: list[str] = []
        # Every filled template through the text tower, [C, K, E]; rebuilt by set_classes.
        self.register_buffer("embeddings", torch.empty(0), persistent=False)

    @torch.no_grad()
    def set_classes(self, head: TextHead, names: Sequence[str]) -> None:
        self.names = list(names)
        texts = [t.format(name) for name in names for t in self.templates]
        self.embeddings = head.encode_text(texts).view(len(names), len(self.templates), -1)
        self.stale = False

    def watch_text_tower(self, text: nn.Module) -> None:
        """Re-embed at the next evaluation whenever ``text`` loads weights (a tuned tower's
        checkpoint); training it is caught by ``train``."""
        text.register_load_state_dict_post_hook(self._text_loaded)

    def _text_loaded(self, module: nn.Module, incompatible_keys) -> None:
        self.stale = True

    def train(self, mode: bool = True) -> ActionCLIPPrompts:
        self.stale |= self.tune_text and not mode  # re-embed at the next evaluation
        return super().train(mode)

    def forward(self, head: TextHead, features: Tensor) -> Tensor:
        if not self.training:
            if self.stale:
                self.set_classes(head, self.names)
            return self.embeddings[None]  # [1, C, K, E]
        C = len(self.names)
        choice = torch.randint(len(self.templates), (C,)).tolist()
        if not self.tune_text:
            return self.embeddings[torch.arange(C), choice]  # [C, E]
        texts = [self.templates[k].format(name) for k, name in zip(choice, self.names, strict=True)]
        tokens = head.tokenizer(texts, head.text.cfg.context_length)
        return head.text(tokens.to(self.embeddings.device))  # [C, E], with gradients


class ShiftConv1d(nn.Module):
    """Depthwise temporal convolution (kernel 3) initialised as a shift: a quarter of the
    channels take the previous frame, a quarter the next, half stay; residual, mean over T."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        weight = torch.zeros(dim, 1, 3)
        quarter = dim // 4
        weight[:quarter, 0, 0] = 1.0  # output t = input t-1
        weight[quarter : dim - quarter, 0, 1] = 1.0  # unchanged
        weight[dim - quarter :, 0, 2] = 1.0  # output t = input t+1
        with torch.no_grad():
            self.conv.weight.copy_(weight)

    def forward(self, frames: Tensor) -> Tensor:
        shifted = self.conv(frames.transpose(1, 2)).transpose(1, 2)  # [B, T, E]
        return (frames + shifted).mean(dim=1)  # [B, E]


class LSTMFusion(nn.Module):
    """One-layer LSTM over the frames, residual, mean over T."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True)

    def forward(self, frames: Tensor) -> Tensor:
        hidden, _ = self.lstm(frames)  # [B, T, E]
        return (frames + hidden).mean(dim=1)  # [B, E]


class TemporalShift(nn.Module):
    """``Block.pre_attn`` site: the patch tokens of frame t take 1/div of their channels from
    frame t-1 and 1/div from frame t+1 (zeros past the ends); other tokens are untouched."""

    def __init__(self, div: int) -> None:
        super().__init__()
        self.div = div

    def forward(self, x: Tensor, block: nn.Module, layout: TokenLayout) -> Tensor:
        B, T, P = layout.batch, layout.frames, layout.num_patches
        start, D = layout.num_prefix, x.shape[-1]
        fold = D // self.div
        patches = x[:, start : start + P].reshape(B, T, P, D)  # [B, T, P, D]
        shifted = torch.zeros_like(patches)
        shifted[:, 1:, :, :fold] = patches[:, :-1, :, :fold]  # forward in time
        shifted[:, :-1, :, fold : 2 * fold] = patches[:, 1:, :, fold : 2 * fold]  # backward
        shifted[..., 2 * fold :] = patches[..., 2 * fold :]
        shifted = shifted.view(B * T, P, D)  # [B*T, P, D]
        return torch.cat([x[:, :start], shifted, x[:, start + P :]], dim=1)


def symmetric_kl_loss(logits: Tensor, labels: Tensor, progress: float = 1.0) -> Tensor:
    """ActionCLIP's loss from class logits ``[B, C]`` and labels ``[B]``: the clip-to-text
    similarities of the batch are ``logits[:, labels]`` ``[B, B]``; KL divergence of their
    softmax (rows: clips, and columns: texts) from the ground truth, averaged. The same all
    through training (``progress`` unused)."""
    if labels.ndim != 1:
        raise ConfigError("ActionCLIP's loss needs hard labels: turn mixup and CutMix off")
    similarity = logits[:, labels]  # [B, B]: clip i vs the text of clip j's label
    truth = (labels[:, None] == labels[None]).float()  # [B, B], symmetric
    target = truth / truth.sum(dim=1, keepdim=True)
    video_to_text = F.kl_div(similarity.log_softmax(dim=1), target, reduction="batchmean")
    text_to_video = F.kl_div(similarity.T.log_softmax(dim=1), target, reduction="batchmean")
    return (video_to_text + text_to_video) / 2


def make_fusion(kind: str, dim: int, num_frames: int, layers: int) -> nn.Module | None:
    if kind == "mean":
        return None  # the classifier's own mean pooling
    if kind == "conv1d":
        return ShiftConv1d(dim)
    if kind == "lstm":
        return LSTMFusion(dim)
    return TemporalTransformer(dim, num_frames, layers, heads=max(dim // 64, 1), residual=True,
                               act="quick_gelu", init_std=0.02, norm_eps=1e-12)


def apply_actionclip(target: Target, cfg: ActionCLIPConfig) -> MethodParts:
    towers = target.towers
    prompts = ActionCLIPPrompts(cfg.templates, cfg.tune_text_encoder)
    if cfg.tune_text_encoder:
        prompts.watch_text_tower(towers.text)
    temporal = make_fusion(cfg.fusion, towers.text.output_dim, target.num_frames,
                           cfg.fusion_layers)
    if cfg.temporal_shift:
        for block in target.backbone.blocks:
            block.pre_attn.append(TemporalShift(cfg.shift_div))
    # The prompts hold no parameters but train: a random template per class and step.
    trainable: list[nn.Module] = [prompts] if temporal is None else [prompts, temporal]
    if cfg.tune_image_encoder:
        trainable.append(target.backbone)
    head = TextHead(towers, target.classes, prompts)
    if cfg.tune_text_encoder:  # the official recipe trains the logit scale with the text tower
        trainable += [towers.text, head.logit_scale]
    return MethodParts(trainable, temporal=temporal, head=head, loss=symmetric_kl_loss)


METHOD = Method("actionclip", ActionCLIPConfig, apply_actionclip, across_frames=True)


# ---- the official release's checkpoints ----------------------------------------------------------

# The ActionCLIP repository saves the whole fine-tuned CLIP (OpenAI names) as
# ``model_state_dict`` and the fusion model as ``fusion_model_state_dict``: "Transf" =
# frame_position_embeddings (77 rows, the first T used) + transformer.resblocks (OpenAI names),
# "LSTM" = lstm_visual; "meanP" has no tensors.
_FUSION_NAMES = [
    (r"^transformer\.resblocks\.", "temporal.blocks."),
    (r"^lstm_visual\.", "temporal.lstm."),
]
# The official test scores with a fixed scale of 100, whatever the file's learned scale.
OFFICIAL_TEST_LOGIT_SCALE = math.log(100)


def _fusion_kind(fusion: dict[str, Tensor]) -> str:
    """The official fusion the tensors name; the ones whose official forward vidadapt's fusion
    does not reproduce are refused (``Transf_cls``; ``Conv_1D`` reshapes where we transpose)."""
    if any(k.startswith("transformer.transformer_enc.") for k in fusion):
        raise CheckpointError("its fusion is 'Transf_cls', which vidadapt does not implement; "
                              "'Transf', 'LSTM' and 'meanP' releases are read")
    if "shift.weight" in fusion:
        raise CheckpointError("its fusion is 'Conv_1D', whose official layout vidadapt's "
                              "conv1d does not reproduce; 'Transf', 'LSTM' and 'meanP' are read")
    if any(k.startswith("transformer.") for k in fusion):
        return "transformer"
    return "lstm" if any(k.startswith("lstm_visual.") for k in fusion) else "mean"


def convert_actionclip_release(
    state_dict: dict[str, Tensor], num_frames: int | None = None
) -> tuple[dict[str, Tensor], dict]:
    """An official ActionCLIP checkpoint (both models) → a vidadapt ``actionclip`` model's
    tensors, and what the file says: the fusion and its depth, both towers
    fine-tuned (its recipe). The frame count is not in the file (the transformer fusion's
    position table has 77 rows); ``num_frames`` picks its first rows."""
    clip = {k.removeprefix("model_state_dict."): v for k, v in state_dict.items()
            if k.startswith("model_state_dict.")}
    fusion = {k.removeprefix("fusion_model_state_dict."): v for k, v in state_dict.items()
              if k.startswith("fusion_model_state_dict.")}
    if any(".net." in k for k in clip):  # TSM shifts the other way round from ours
        raise CheckpointError("it was trained with TSM (k400_ft_tsm), whose shift directions "
                              "vidadapt's temporal_shift does not reproduce")
    state = {f"backbone.{k}": v for k, v in convert_openai_clip(clip).items()}
    state.update({f"head.text.{k}": v for k, v in convert_openai_text(clip).items()})
    state["head.logit_scale"] = torch.tensor(OFFICIAL_TEST_LOGIT_SCALE)
    kind = _fusion_kind(fusion)
    facts: dict = {"fusion": kind, "tune_image_encoder": True, "tune_text_encoder": True}
    if kind == "transformer":  # without num_frames the import asks for it before loading
        positions = fusion.pop("frame_position_embeddings.weight")  # [77, E]
        state["temporal.temporal_embed"] = positions[:num_frames]  # [T, E]
        facts["fusion_layers"] = len({k.split(".")[2] for k in fusion
                                      if k.startswith("transformer.resblocks.")})
    fusion.pop("frame_position_embeddings.weight", None)  # built but unused by the LSTM
    state.update(rename_keys(fusion, _FUSION_NAMES + OPENAI_RULES))
    return state, facts

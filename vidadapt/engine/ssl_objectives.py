"""Self-supervised losses on a model's features (``vidadapt pretrain``, ``ssl.objective``).

Unlike the pretext tasks of ``engine.pretext`` (a label a clip carries about itself, answered by
a head), these train the method's parts through a loss on what the model computes:

* ``masked`` — masked feature prediction. The same patch positions are blanked in every frame
  of a clip (tubes, so a hidden patch cannot be copied from the next frame: it has to be
  inferred from the rest of the frame and from where things move in the others; VideoMAE's
  argument). The target is the frozen image model's own last-block feature of each hidden patch
  in the *unmasked* clip (per token layer-normalised, as feature-distillation work does); the
  adapted model predicts it from its last-block tokens through a linear predictor; mean squared
  error over the hidden patches. Blanking is at the pixels (the dataset's mean colour), so the
  mask needs no site in the model and every method that reads the frames can be pre-trained.
* ``distill`` — two-view self-distillation (DINO's loss over SVT's views). A clip sampled twice
  as long and dense gives a *global* view (every other frame: all of it) and a *local* one (T
  consecutive frames: a random half of it at twice the rate, from a random crop of at least
  ``local_scale`` of the side). A projection head maps the clip features (the readout that a
  classifier later reads) to ``prototypes`` outputs; the student's softmax of the local view
  must match the teacher's centred and sharpened softmax of the global view (cross-entropy).
  The teacher is an exponential moving average of the student (its parts and projection head,
  the frozen weights shared), its momentum rising from ``ema`` to 1 on a cosine.

Each objective is a module whose ``forward(video)`` returns the loss; the trainer steps its
trainable parameters (the model's parts and the objective's own) and calls ``after_step``.
The model's head answers nothing here and stays frozen (a pre-trained checkpoint has none).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..backbones import ViT
from ..backbones.vit import TokenLayout
from ..config import SSLConfig
from ..errors import ConfigError
from ..models import VideoModel
from .checkpoint import backbone_fingerprint
from .distributed import DistInfo, all_reduce_mean


class FeatureObjective(nn.Module):
    """A self-supervised loss on ``model``'s features: ``forward(video) -> loss``."""

    def __init__(self, model: VideoModel) -> None:
        super().__init__()
        self.model = model
        # The frozen weights' fingerprint, taken while the head still trains: what a model
        # that starts from these parts, with a head of its own, will find.
        self.fingerprint = backbone_fingerprint(model)
        model.head.requires_grad_(False)  # no classes to answer

    ranks_epochs = True  # whether a lower validation loss means a better epoch (fixed targets)

    def after_step(self, progress: float) -> None:
        """Called after every optimizer step; ``progress``: the fraction of training done."""

    def own_state(self) -> dict[str, Tensor]:
        """The objective's own state that a resume needs (its trained parameters and buffers;
        not the model's, saved with it, nor a frozen target model)."""
        return {name: value for name, value in self.state_dict().items()
                if not name.startswith(("model.", "target."))}


def random_generator(video: Tensor, seed: int | None) -> torch.Generator | None:
    """A generator on ``video``'s device seeded with ``seed``; None (the global RNG, whose state
    training saves) without one."""
    return None if seed is None else torch.Generator(video.device).manual_seed(seed)


class MaskedFeaturePrediction(FeatureObjective):
    """``masked``: predict the frozen image model's features of tubes hidden from the clip."""

    def __init__(self, model: VideoModel, target: ViT, mask_ratio: float) -> None:
        super().__init__(model)
        backbone = model.backbone
        if len(backbone.video_tokenizer) or model.inputs is not None:
            raise ConfigError(f"ssl.objective masked: {model.spec.method} does not tokenise the "
                              "clip frame by frame, so its tokens have no patch positions to "
                              "predict; use ssl.objective distill")
        if not any(p.requires_grad for p in backbone.parameters()):
            raise ConfigError(f"ssl.objective masked predicts the image model's tokens, and "
                              f"{model.spec.method} trains nothing inside it; use "
                              "ssl.objective distill")
        outside = [name for name, stage in (("readout", model.readout),
                                            ("temporal stage", model.temporal))
                   if stage is not None and any(p.requires_grad for p in stage.parameters())]
        if outside:  # they would stay as initialised (and idle parameters stop DDP)
            raise ConfigError(f"ssl.objective masked trains the image model's tokens only; "
                              f"{model.spec.method}'s {' and '.join(outside)} would not learn; "
                              "use ssl.objective distill")
        self.target = target.requires_grad_(False).eval()
        self.mask_ratio = mask_ratio
        self.predictor = nn.Linear(backbone.width, target.width)

    def train(self, mode: bool = True) -> MaskedFeaturePrediction:
        super().train(mode)
        self.target.eval()  # the targets are the image model's, always in inference mode
        return self

    def draw_mask(self, batch: int, patches: int, device: torch.device,
                  generator: torch.Generator | None) -> Tensor:
        """``[batch, patches]`` bool, exactly ``round(mask_ratio * patches)`` True per clip."""
        hidden = max(1, min(patches - 1, round(self.mask_ratio * patches)))
        noise = torch.rand(batch, patches, device=device, generator=generator)
        ranks = noise.argsort(dim=1).argsort(dim=1)  # a random permutation per clip
        return ranks < hidden

    def blank(self, video: Tensor, mask: Tensor) -> Tensor:
        """Clips ``[B, T, C, H, W]`` with the pixels of the patches ``mask`` ``[B, h*w]``
        marks set to 0 (the dataset's mean colour after normalisation) in every frame."""
        B, T, C, H, W = video.shape
        p = self.model.backbone.cfg.patch_size
        h, w = H // p, W // p
        pixels = mask.view(B, 1, 1, h, 1, w, 1).expand(B, T, C, h, p, w, p)
        return video.masked_fill(pixels.reshape(B, T, C, H, W), 0.0)

    def forward(self, video: Tensor, seed: int | None = None) -> Tensor:
        B, T, _, H, W = video.shape
        p = self.model.backbone.cfg.patch_size
        patches = (H // p) * (W // p)
        mask = self.draw_mask(B, patches, video.device, random_generator(video, seed))  # [B, P]
        blanked = self.blank(video, mask)  # [B, T, C, H, W]
        with torch.no_grad():
            target = self.patch_features(self.target, video)  # [B*T, P, D]
            target = F.layer_norm(target, target.shape[-1:])
        tokens, _, layout = self.model.encode(blanked)  # [B*T, N, D]
        student = final_patches(self.model.backbone, tokens, layout)
        error = (self.predictor(student).float() - target.float()).pow(2).mean(dim=-1)
        hidden = mask.repeat_interleave(T, dim=0).float()  # [B*T, P]: 1 where hidden
        return (error * hidden).sum() / hidden.sum()  # no boolean indexing: no host sync

    @staticmethod
    def patch_features(vit: ViT, video: Tensor) -> Tensor:
        """A ViT's final-norm patch tokens ``[B*T, P, D]``."""
        tokens, _, layout = vit.forward_tokens(video)
        return final_patches(vit, tokens, layout)


def final_patches(vit: ViT, tokens: Tensor, layout: TokenLayout) -> Tensor:
    """The patch tokens of a ViT's last-block ``tokens`` ``[B*T, N, D]``, final-normed."""
    start = layout.num_prefix
    return vit.norm(tokens[:, start:start + layout.num_patches])  # [B*T, P, D]


class ProjectionHead(nn.Module):
    """DINO's head: MLP to a bottleneck, L2-normalised, then cosines to ``prototypes`` unit-norm
    rows."""

    def __init__(self, dim: int, prototypes: int, hidden: int = 2048, bottleneck: int = 256
                 ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Linear(bottleneck, prototypes, bias=False)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> Tensor:
        # In fp32 under autocast: bf16 cosines would move the teacher's sharpened logits.
        with torch.autocast(features.device.type, enabled=False):
            z = F.normalize(self.mlp(features.float()), dim=-1)  # [B, bottleneck]
            return z @ F.normalize(self.prototypes.weight, dim=-1).t()  # [B, K], cosines


class _Embedder(nn.Module):
    """Clip → projection-head outputs, named as in :class:`SelfDistillation` (``model.*``,
    ``head.*``) so the teacher runs as the student with the EMA tensors swapped in."""

    def __init__(self, model: VideoModel, head: ProjectionHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, video: Tensor) -> Tensor:
        # What the classifier's head would read, through the projection head.
        return self.head(self.model.fuse(self.model.video_features(video)))


class SelfDistillation(FeatureObjective):
    """``distill``: a local view's distribution matches the EMA teacher's of the global view."""

    ranks_epochs = False  # the teacher moves: its losses at two epochs are not comparable

    def __init__(self, model: VideoModel, ssl: SSLConfig, dist: DistInfo | None = None) -> None:
        super().__init__(model)
        if not any(p.requires_grad for p in model.feature_parameters()):
            raise ConfigError(f"ssl.objective distill: {model.spec.method} trains nothing that "
                              "makes the clip features")
        if not isinstance(model.head, nn.Linear):
            raise ConfigError(f"ssl.objective distill reads the features a linear head reads; "
                              f"{model.spec.method}'s head is a {type(model.head).__name__}")
        self.head = ProjectionHead(model.head.in_features, ssl.prototypes)
        self.ssl, self.dist = ssl, dist or DistInfo()
        self.student_names = [n for n, p in self.named_parameters() if p.requires_grad]
        embedder = dict(_Embedder(model, self.head).named_parameters())
        if not set(self.student_names) <= embedder.keys():  # the teacher's weights must land
            raise ValueError("the teacher's names do not match the student's modules")
        self.teacher = nn.ParameterList(
            nn.Parameter(p.detach().clone(), requires_grad=False)
            for n, p in self.named_parameters() if n in self.student_names)
        self.register_buffer("center", torch.zeros(1, ssl.prototypes))
        # The teacher outputs of this step's micro-batches: the centre moves once per step.
        self.step_outputs: list[Tensor] = []

    def views(self, video: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Global ``[B, T, ...]`` (every other frame) and local (T consecutive frames of a
        random crop, resized back) views of clips ``[B, 2T, C, H, W]``."""
        B, frames, C, H, W = video.shape
        T = frames // 2
        rand = torch.rand(B, 4, device=video.device, generator=generator)
        start = (rand[:, 0] * (T + 1)).long().clamp(max=T)  # [B]
        index = start[:, None] + torch.arange(T, device=video.device)  # [B, T]
        local = video.gather(1, index.view(B, T, 1, 1, 1).expand(B, T, C, H, W))
        scale = self.ssl.local_scale + (1 - self.ssl.local_scale) * rand[:, 1]  # side fraction
        shift = (1 - scale)[:, None] * (2 * rand[:, 2:] - 1)  # crop centre in [-1, 1] coords
        theta = torch.zeros(B, 2, 3, device=video.device, dtype=video.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, [B, T * C, H, W], align_corners=False)  # [B, H, W, 2]
        # One grid for every frame and channel of a clip; border: the crop stays inside.
        cropped = F.grid_sample(local.view(B, T * C, H, W), grid, mode="bilinear",
                                padding_mode="border", align_corners=False)
        return video[:, 0::2], cropped.view(B, T, C, H, W)

    def forward(self, video: Tensor, seed: int | None = None) -> Tensor:
        if video.shape[1] != 2 * self.model.num_frames:
            raise ValueError(f"ssl.objective distill takes clips of 2 × {self.model.num_frames} "
                             f"frames, got {video.shape[1]}")
        global_view, local_view = self.views(video, random_generator(video, seed))
        teacher_logits = self.teacher_outputs(global_view)  # [B, K]
        targets = F.softmax((teacher_logits - self.center) / self.ssl.teacher_temp, dim=-1)
        if self.training:
            self.step_outputs.append(teacher_logits.float().mean(dim=0, keepdim=True))
        student = _Embedder(self.model, self.head)(local_view)  # [B, K]
        log_probs = F.log_softmax(student / self.ssl.student_temp, dim=-1)
        return -(targets * log_probs).sum(dim=-1).mean()

    @torch.no_grad()
    def teacher_outputs(self, view: Tensor) -> Tensor:
        was_training = self.model.training
        self.model.eval()  # no dropout or drop-path in the teacher
        try:
            weights = dict(zip(self.student_names, self.teacher, strict=True))
            return functional_call(_Embedder(self.model, self.head), weights, (view,))
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """The centre moves towards the step's mean teacher output (all processes', all
        micro-batches'); the teacher towards the student, with a momentum from ``ema`` at the
        start to 1 at the end (cosine)."""
        if self.step_outputs:
            step_mean = all_reduce_mean(torch.cat(self.step_outputs).mean(dim=0, keepdim=True),
                                        self.dist)
            self.center.mul_(0.9).add_(step_mean, alpha=0.1)
            self.step_outputs = []
        momentum = 1 - (1 - self.ssl.ema) * (math.cos(math.pi * progress) + 1) / 2
        students = dict(self.named_parameters())
        for name, teacher in zip(self.student_names, self.teacher, strict=True):
            teacher.lerp_(students[name].detach(), 1 - momentum)


def feature_objective(model: VideoModel, target: ViT | None, ssl: SSLConfig,
                      dist: DistInfo | None = None) -> FeatureObjective:
    """The ``ssl.objective`` loss module for ``model`` (``target``: the frozen image model,
    for ``masked``)."""
    if ssl.objective == "masked":
        if target is None:
            raise ValueError("masked feature prediction needs the frozen image model")
        return MaskedFeaturePrediction(model, target, ssl.mask_ratio)
    if ssl.objective == "distill":
        return SelfDistillation(model, ssl, dist)
    raise ConfigError(f"ssl.objective {ssl.objective} is a pretext task, not a loss on features")

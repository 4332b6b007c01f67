"""The video model: image encoder with extension sites → readout → temporal stage → head.

    model = create_model("aim", "vit_b16_clip", num_classes=400, pretrained="ViT-B-16.pt")
    model = create_model("lora+coop", pretrained="ViT-B-16.pt", classes=names)  # a text head
    logits = model(video)  # [B, T, 3, H, W] -> [B, C]

Every method and stack is built by :func:`create_model`: it builds the image encoder (and CLIP's
text tower when a method of the stack classifies with text), applies the methods in order
(each returns its ``MethodParts``) and assembles one :class:`VideoModel` from their parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import ViT
from .backbones.vit import TokenLayout
from .checkpoints import create_backbone
from .clip.towers import Clip, build_clip
from .data.motion import channels_for
from .errors import ConfigError
from .methods.base import STAGES, Head, Method, MethodParts, Target, Trainable, motion_read
from .methods.registry import parse_methods


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in checkpoints)."""

    method: str  # "aim", or stacked methods "lora+aim"
    backbone: str  # preset name, e.g. "vit_b16_clip"
    num_classes: int  # size of the classification head
    num_frames: int = 8  # frames per clip T (AIM's temporal embedding has T rows)
    image_size: int = 224  # input side; position embeddings are resampled to it
    dropout: float = 0.5  # dropout before the head
    drop_path: float = 0.0  # backbone stochastic depth (only matters when the backbone trains)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name → its options


class TunableModel(nn.Module):
    """What the engine needs from a model: a frozen part, named tuned parts, adapter state.

    ``set_trainable`` freezes everything but the parts' parameters. The *tuned state* that an
    adapter checkpoint stores is those parameters plus the persistent buffers of the parts'
    modules (state fitted from data rather than learned, e.g. a Tip-Adapter cache). Fully
    frozen modules stay in eval mode when the model trains.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, list[str]] = {}  # part name → names of the parameters it trains
        self.tuned_buffers: list[str] = []  # persistent buffers of the parts' modules
        self.tuned_modules: list[str] = []  # names of the modules the parts declared
        self.spec: ModelSpec | None = None

    def set_trainable(self, parts: dict[str, Trainable]) -> None:
        """Freeze everything, then unfreeze what each part declared (modules or parameters)."""
        self.requires_grad_(False)
        ids, module_names = {}, {id(m): name for name, m in self.named_modules()}
        self.tuned_buffers, self.tuned_modules = [], []
        for name, objects in parts.items():
            for obj in objects:
                params = [obj] if isinstance(obj, nn.Parameter) else list(obj.parameters())
                for p in params:
                    p.requires_grad_(True)
                    ids.setdefault(id(p), name)
                if isinstance(obj, nn.Module):
                    prefix = module_names[id(obj)]
                    self.tuned_modules.append(prefix)
                    self.tuned_buffers += [
                        f"{prefix}.{key}" if prefix else key
                        for key, value in obj.state_dict(keep_vars=True).items()
                        if not isinstance(value, nn.Parameter)
                    ]
        self.parts = {name: [] for name in parts}
        for pname, p in self.named_parameters():
            if id(p) in ids:
                self.parts[ids[id(p)]].append(pname)

    def train(self, mode: bool = True) -> TunableModel:
        super().train(mode)
        if mode:  # frozen modules never switch to training behaviour...
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
            for name in self.tuned_modules:  # ...but the parts' modules do, even those
                self.get_submodule(name).train()  # without parameters inside a frozen one
        return self

    def _tuned_names(self) -> set[str]:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return trainable | set(self.tuned_buffers)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the tuned state: what an adapter checkpoint stores."""
        names = self._tuned_names()
        return {n: t.detach() for n, t in self.state_dict(keep_vars=True).items() if n in names}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        expected = self._tuned_names()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        if missing or unexpected:
            raise KeyError(
                f"adapter weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        # load_state_dict (not copy_) so modules can adapt to the state, e.g. a cache's size.
        self.load_state_dict(state, strict=False)

    def parameter_counts(self) -> dict[str, int]:
        """``total``, ``tunable`` and tunable parameters per part."""
        params = dict(self.named_parameters())
        counts = {name: sum(params[n].numel() for n in names) for name, names in self.parts.items()}
        counts["tunable"] = sum(p.numel() for p in params.values() if p.requires_grad)
        counts["total"] = sum(p.numel() for p in params.values())
        return counts

    def print_trainable_parameters(self) -> None:
        c = self.parameter_counts()
        print(
            f"trainable params: {c['tunable']:,} || all params: {c['total']:,} "
            f"|| trainable%: {100 * c['tunable'] / c['total']:.4f}"
        )



class LinearHead(nn.Linear, Head):
    """Dropout → Linear: clip features ``[B, D]`` → logits ``[B, C]`` (N(0, 0.01) weights,
    zero bias)."""

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__(dim, num_classes)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.zeros_(self.bias)

    def forward(self, features: Tensor, context: Tensor | None = None) -> Tensor:
        return super().forward(self.dropout(features))


class VideoModel(TunableModel):
    """Frames ``[B, T, 3, H, W]`` → logits ``[B, C]``, in four stages (five with a method's
    inputs stage):

    1. the image encoder ``backbone`` runs every frame, with the methods' modules at its
       extension sites (or the images a method's *inputs* stage makes of the clip: DualPath's
       frames and frame grids);
    2. the *readout* makes the clip's features from its tokens: by default each frame's
       final-norm class token (projected to CLIP's joint space for a text head), averaged over
       the frames (``frame_pool``: mean or max; ST-Adapter averages before the final norm), or
       kept per frame ``[B, T, E]`` for a learned temporal stage; a method may replace it
       (``MethodParts.readout``, EVL's decoder over several blocks' outputs);
    3. the *temporal* stage, when a method gives one, fuses the frames ``[B, T, E] → [B, E]``;
    4. the *head* classifies: a ``LinearHead``, or a method's text head. A *context* stage
       (X-CLIP's) gives the head an extra input computed from the last block's tokens.

    Stages 1-2 are ``video_features``: when none of their parameters trains, the engine
    computes them once per view and trains ``classify`` (stages 3-4) on those features (the
    feature cache). A backbone with nothing to train runs without autograd.
    """

    def __init__(
        self, backbone: ViT, num_frames: int, parts: MethodParts, frame_pool: str = "mean",
        motion: str = "none",
    ) -> None:
        super().__init__()
        if parts.head is None:
            raise ValueError("a VideoModel needs a head")
        self.backbone = backbone
        self.num_frames = num_frames
        self.motion = motion  # the motion maps the clips carry after RGB ("none": RGB only)
        self.inputs = parts.inputs
        self.readout = parts.readout
        self.pool_before_norm = parts.pool_before_norm
        self.frame_pool = frame_pool
        self.temporal = parts.temporal
        self.context = parts.context
        self.head = parts.head
        # Training loss ``(logits, labels, progress) -> loss`` replacing cross-entropy; None = the
        # engine's cross-entropy.
        self.loss_fn = parts.loss

    # ---- stages 1-2: pixels → features ---------------------------------------------------------

    @property
    def input_channels(self) -> int:
        """Channels per frame of the clips the model takes: RGB and the motion maps."""
        return 3 + channels_for(self.motion)

    def split_motion(self, video: Tensor) -> tuple[Tensor, Tensor | None]:
        """Clips ``[B, T, 3 + M, H, W]`` → RGB ``[B, T, 3, H, W]`` and motion maps (None for
        RGB clips)."""
        if video.shape[2] != self.input_channels:
            hint = ("set data.motion: auto" if self.motion != "none"
                    else "leave data.motion at auto")
            raise ValueError(f"the model takes clips of {self.input_channels} channels per "
                             f"frame (RGB{'' if self.motion == 'none' else ' + ' + self.motion})"
                             f", got {video.shape[2]}: {hint}")
        if self.motion == "none":
            return video, None
        return video[:, :, :3], video[:, :, 3:]

    def encode(self, video: Tensor) -> tuple[Tensor, list[Tensor], TokenLayout]:
        """The image encoder's last tokens ``[B*T, N, D]``, the outputs of the blocks the
        readout reads, and the token layout."""
        layers = self.readout.layers if self.readout is not None else ()
        # A frozen backbone needs no autograd graph: nothing behind it trains (EVL's premise).
        backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        rgb, motion = self.split_motion(video)
        images = rgb if self.inputs is None else self.inputs(rgb)  # [B, T', 3, H, W]
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            return self.backbone.forward_tokens(images, layers, motion)

    def read(self, tokens: Tensor, collected: list[Tensor], layout: TokenLayout,
             video: Tensor) -> Tensor:
        """The readout: clip features ``[B, D]``, or frame embeddings ``[B, T, E]`` when a
        temporal stage fuses them. A method's readout also gets the input ``video`` (a side
        network reads the pixels as well as the blocks' outputs)."""
        if self.readout is not None:
            return self.readout(collected, layout, self.split_motion(video)[0])
        proj = self.backbone.proj  # CLIP's joint-space projection; None for a linear head
        cls = tokens[:, 0].view(layout.batch, layout.frames, -1)  # [B, T, D]
        if self.pool_before_norm:
            pooled = self.backbone.norm(cls.mean(dim=1))  # [B, D]
            return pooled if proj is None else pooled @ proj  # [B, E]
        frames = self.backbone.norm(cls)  # [B, T, D]
        if proj is not None:
            frames = frames @ proj  # [B, T, E]
        if self.temporal is not None:
            return frames
        return frames.mean(dim=1) if self.frame_pool == "mean" else frames.amax(dim=1)

    def video_features(self, video: Tensor) -> Tensor:
        """Stages 1-2: features of clips ``[B, T, 3, H, W]`` (what the feature cache keeps)."""
        return self.read(*self.encode(video), video)

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the features depend on. A context stage counts: its input is not in the
        features, so a model with one never trains on cached features."""
        for stage in (self.inputs, self.backbone, self.readout, self.context):
            if stage is not None:
                yield from stage.parameters()

    # ---- stages 3-4: features → logits ---------------------------------------------------------

    def fuse(self, features: Tensor) -> Tensor:
        """Stage 3: ``video_features``' output → what the head reads ``[B, E]`` (the temporal
        stage's fusion of frame embeddings ``[B, T, E]``; as it is without one)."""
        return features if self.temporal is None else self.temporal(features)

    def classify(self, features: Tensor, context: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]`` of ``video_features``' output (and the context stage's)."""
        return self.head(self.fuse(features), context)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of clips ``[B, T, 3, H, W]``, or of their precomputed features (the engine's
        feature cache trains frozen-encoder models on those)."""
        if x.ndim < 5:
            return self.classify(x)
        tokens, collected, layout = self.encode(x)
        context = self.context(tokens, layout) if self.context is not None else None
        return self.classify(self.read(tokens, collected, layout, x), context)

    # ---- the head's hooks ----------------------------------------------------------------------

    def set_classes(self, classes: Sequence[str]) -> None:
        """Classify among ``classes`` from now on (a text head only: base-to-new evaluation)."""
        self.head.set_classes(classes)
        if self.spec is not None:
            self.spec.num_classes = len(classes)

    @property
    def needs_training_features(self) -> bool:
        return self.head.needs_training_features

    def fit_features(self, features: Tensor, labels: Tensor) -> None:
        self.head.fit_features(features, labels)

    def select_hparams(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return self.head.select_hparams(features, labels)


# ---- the factory --------------------------------------------------------------------------------


def create_model(
    method: str | Iterable[str],
    backbone: str | ViT | Clip = "vit_b16_clip",
    num_classes: int | None = None,
    num_frames: int = 8,
    pretrained: str | None = None,
    image_size: int | None = None,
    dropout: float = 0.5,
    drop_path: float = 0.0,
    classes: Sequence[str] | None = None,
    **options: Any,
) -> VideoModel:
    """Build a video model: image encoder (+ pretrained weights), the method(s), the head.

    ``method`` is one registered name, ``"a+b"`` or a list to stack methods in order. For one
    method, ``options`` are its config fields (``create_model("aim", temporal=False)``); for a
    stack, one dict (or config) per method (``create_model("lora+aim", lora={"rank": 4})``).
    ``backbone`` is a preset name, a ``ViT``, or CLIP's towers (a ``Clip``). A stack with a
    CLIP method classifies with text: it needs the class names (``classes``) and gets CLIP's
    text tower from ``pretrained`` (or a random one, per the method's ``text`` option).
    Otherwise the head is linear, for ``num_classes`` classes (default: ``len(classes)``, or
    400).
    """
    methods = parse_methods(method)
    configs = method_configs(methods, options)
    names = list(classes) if classes is not None else None
    count = num_classes or (len(names) if names is not None else 400)
    if names is not None and len(names) != count:
        raise ConfigError(f"num_classes is {count} but {len(names)} class names were given")
    text_cfg = next((configs[m.name] for m in methods if m.classifies_with_text), None)
    if text_cfg is not None and names is None:
        raise ConfigError(f"method {'+'.join(configs)} classifies with the class names: pass "
                          "classes=[...] (configs take them from the annotation)")
    overrides = {"drop_path": drop_path, **({} if image_size is None else
                                            {"image_size": image_size})}
    vit, towers, backbone_name = _encoders(backbone, text_cfg, names, pretrained, overrides)

    # A linear head's weights are drawn before the methods' modules: a seed gives the model
    # that earlier releases gave.
    linear = LinearHead(vit.width, count, dropout) if text_cfg is None else None
    target = Target(vit, num_frames, names or [str(i) for i in range(count)], towers)
    applied = {m.name: m.apply(target, configs[m.name]) for m in methods}
    parts = merge_parts(applied)
    _check_images_are_frames(methods, applied)
    # The final norm serves only the class-token readout: under a method's readout it would be
    # a trainable parameter without a gradient (DDP refuses those).
    unused = vit.norm if parts.readout is not None else None
    trainable = {name: [t for t in p.trainable if t is not unused]
                 for name, p in applied.items()}
    if parts.head is None:
        parts.head = linear
        trainable = {"head": [linear], **trainable}
    frame_pool = text_cfg.temporal_pool if text_cfg is not None else "mean"
    motion = motion_read(methods, configs)
    _check_motion_fits(applied, motion)
    model = VideoModel(vit, num_frames, parts, frame_pool, motion)
    model.set_trainable(trainable)
    model.spec = ModelSpec(
        method="+".join(configs),
        backbone=backbone_name,
        num_classes=count,
        num_frames=num_frames,
        image_size=vit.cfg.image_size,
        dropout=dropout,
        drop_path=drop_path,
        options={name: asdict(cfg) for name, cfg in configs.items()},
    )
    return model


def method_configs(methods: list[Method], options: dict[str, Any]) -> dict[str, Any]:
    """Each method's config dataclass from ``create_model``'s options."""
    names = [m.name for m in methods]
    if len(methods) == 1:
        return {names[0]: methods[0].make_config(options.pop(names[0], options))}
    extra = sorted(set(options) - set(names))
    if extra:
        raise ConfigError(f"stacked methods take options per method name; got {extra}")
    return {m.name: m.make_config(options.get(m.name)) for m in methods}


def _encoders(
    backbone: str | ViT | Clip, text_cfg: Any, classes: list[str] | None,
    pretrained: str | None, overrides: dict[str, Any],
) -> tuple[ViT, Clip | None, str]:
    """The image encoder, CLIP's towers when ``text_cfg`` (a text head's ClipOptions) asks
    for them, and the backbone's name for the spec ("custom" for a ready-made object)."""
    if isinstance(backbone, Clip):
        towers, name = backbone, "custom"
    elif isinstance(backbone, ViT):
        if text_cfg is not None:
            raise ConfigError("a text head needs CLIP's text tower: pass the towers (a "
                              "vidadapt.clip.towers.Clip) or a backbone preset name")
        towers, name = None, "custom"
        vit = backbone
    elif text_cfg is not None:
        towers, name = build_clip(text_cfg, classes, backbone, pretrained, **overrides), backbone
    else:
        towers, name = None, backbone
        vit = create_backbone(backbone, pretrained=pretrained, **overrides)
    if towers is not None:
        vit = towers.visual
    if text_cfg is None:
        vit.proj = None  # a linear head reads the pooled embedding; the projection is unused
        towers = None
    return vit, towers, name


def _check_motion_fits(applied: dict[str, MethodParts], motion: str) -> None:
    """Motion maps are per frame of the clip: the image model must see those frames, as they
    are and in order (no inputs stage, one token sequence per frame)."""
    if motion == "none":
        return
    other = next((name for name, p in applied.items()
                  if p.inputs is not None or not p.inputs_are_frames), None)
    if other is not None:
        raise ConfigError(f"the clips' {motion} maps are per frame, and {other} gives the image "
                          "model other images than the clip's frames (or fewer), which no map "
                          f"matches; stack motion prompts without {other}, or with its "
                          "options that show the image model every frame in order")


def _check_images_are_frames(methods: list[Method], applied: dict[str, MethodParts]) -> None:
    """A method relating the image model's images as frames in time (``across_frames``) needs
    them to be the clip's frames, which DualPath's frames and grids are not."""
    timed = [m.name for m in methods if m.across_frames]
    others = [name for name, p in applied.items() if not p.inputs_are_frames]
    if len(others) > 1:
        raise ConfigError(f"{others[0]} and {others[1]} each give the image model their own "
                          "inputs in place of the clip's frames; stack at most one of them")
    if others and timed:
        raise ConfigError(f"{others[0]} gives the image model images that are not the clip's "
                          f"frames in time, and {' and '.join(timed)} would relate them as "
                          "frames; stack it with frame-wise methods only (lora, vpt, bitfit...)")


def merge_parts(applied: dict[str, MethodParts]) -> MethodParts:
    """One record of the stages the methods of a stack provide, after checking that at most
    one provides each stage and that the stages fit together."""
    merged = MethodParts(pool_before_norm=any(p.pool_before_norm for p in applied.values()))
    for stage in STAGES:
        providers = [name for name, p in applied.items() if getattr(p, stage) is not None]
        if len(providers) > 1:
            raise ConfigError(f"methods {' and '.join(providers)} both provide the model's "
                              f"{stage}; stack at most one of them")
        if providers:
            setattr(merged, stage, getattr(applied[providers[0]], stage))

    def provider(stage: str) -> str:
        return next(name for name, p in applied.items() if getattr(p, stage))

    if merged.readout is not None and merged.head is not None:
        raise ConfigError(f"{provider('readout')} replaces the readout with features outside "
                          f"CLIP's joint space, so {provider('head')}'s text head cannot read "
                          "them")
    if merged.pool_before_norm and merged.temporal is not None:
        raise ConfigError(f"{provider('pool_before_norm')} averages the frames before the final "
                          f"norm, which leaves no frames for {provider('temporal')}'s temporal "
                          "stage")
    if merged.readout is not None and (merged.pool_before_norm or merged.temporal is not None):
        other = provider("pool_before_norm" if merged.pool_before_norm else "temporal")
        raise ConfigError(f"{provider('readout')} replaces the readout that {other} changes")
    return merged


def spec_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """``create_model``'s arguments that rebuild the architecture of ``spec`` (the options
    per method name, as a stack takes them)."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    fields.pop("options")
    return {**fields, **spec.options}

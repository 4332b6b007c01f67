"""Video classifier = frozen image ViT over frames + the methods attached to it + a linear head."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import ViT
from .methods import parse_methods
from .methods.registry import Trainable


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
    frozen modules stay in eval mode when the model trains. Subclasses hold the image encoder
    in ``self.backbone``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, list[str]] = {}  # part name → names of the parameters it trains
        self.tuned_buffers: list[str] = []  # persistent buffers of the parts' modules
        self.spec: ModelSpec | None = None

    def set_trainable(self, parts: dict[str, Trainable]) -> None:
        """Freeze everything, then unfreeze what each part declared (modules or parameters)."""
        self.requires_grad_(False)
        ids, module_names = {}, {id(m): name for name, m in self.named_modules()}
        self.tuned_buffers = []
        for name, objects in parts.items():
            for obj in objects:
                params = [obj] if isinstance(obj, nn.Parameter) else list(obj.parameters())
                for p in params:
                    p.requires_grad_(True)
                    ids.setdefault(id(p), name)
                if isinstance(obj, nn.Module):
                    prefix = module_names[id(obj)]
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
        if mode:  # frozen modules never switch to training behaviour
            for module in self.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
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

    # ---- state fitted from features rather than learned (engine.features calls these) ---------

    @property
    def needs_training_features(self) -> bool:
        """Whether ``fit_features`` needs the training features (a Tip-Adapter cache does)."""
        return False

    def fit_features(self, features: Tensor, labels: Tensor) -> None:
        """Fit state from training clip features ``[N, V, D]`` and labels ``[N, V]``, once
        before training. Models without such state keep this no-op."""

    def select_hparams(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Choose inference hyper-parameters on validation features ``[N, V, D]`` and labels
        ``[N]`` (never on the test split); returns the choice. Default: nothing to choose."""
        return {}

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters ``video_features`` depends on. When none of them trains, the engine may
        compute the features once per view and train on those (the feature cache)."""
        return self.backbone.parameters()

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


class VideoClassifier(TunableModel):
    """Frames ``[B, T, 3, H, W]`` → logits ``[B, num_classes]``.

    Per frame the backbone gives the final-norm class token; frames are averaged, then dropout
    and a Linear head. Methods attach to ``self.backbone``'s extension sites; only the
    parameters they declare (plus the head) train, and fully frozen modules stay in eval mode.

    A method may replace the pooling by setting ``video_head``: a module with a ``layers``
    attribute (block indices) called as ``video_head(tokens, layout)`` on those blocks' outputs
    (``ViT.forward_tokens``), returning the clip feature ``[B, D]`` that dropout and the head
    classify (EVL's decoder). A backbone with nothing to train runs without autograd.
    """

    def __init__(
        self, backbone: ViT, num_classes: int, num_frames: int, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_frames = num_frames
        # ST-Adapter averages the frames before the final norm, AIM after it.
        self.norm_before_pool = True
        self.video_head: nn.Module | None = None  # replaces the pooling (see the docstring)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.width, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def frame_features(self, video: Tensor) -> Tensor:
        """Final-norm class token of every frame, ``[B, T, D]``."""
        return self.backbone(video)

    def feature_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters ``video_features`` depends on: the backbone's and the video head's."""
        yield from self.backbone.parameters()
        if self.video_head is not None:
            yield from self.video_head.parameters()

    def video_features(self, video: Tensor) -> Tensor:
        """One feature per clip, ``[B, D]``."""
        layers = self.video_head.layers if self.video_head is not None else ()
        # A frozen backbone needs no autograd graph: nothing behind it trains (EVL's premise).
        backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and backbone_trains):
            tokens, collected, layout = self.backbone.forward_tokens(video, layers)
        if self.video_head is not None:
            return self.video_head(collected, layout)
        cls = tokens[:, 0].view(layout.batch, layout.frames, -1)  # [B, T, D]
        if self.norm_before_pool:
            return self.backbone.norm(cls).mean(dim=1)
        return self.backbone.norm(cls.mean(dim=1))

    def classify(self, features: Tensor) -> Tensor:
        """Logits of clip features ``[B, D]`` (``video_features``' output)."""
        return self.head(self.dropout(features))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of clips ``[B, T, 3, H, W]``, or of precomputed clip features ``[B, D]``
        (the engine's feature cache trains frozen-backbone models on those)."""
        return self.classify(x if x.ndim == 2 else self.video_features(x))

    def set_trainable(self, parts: dict[str, Trainable]) -> None:
        """Freeze everything, then unfreeze the head and what each method declared."""
        super().set_trainable({"head": [self.head], **parts})


def create_model(
    method: str | Iterable[str],
    backbone: str | ViT = "vit_b16_clip",
    num_classes: int = 400,
    num_frames: int = 8,
    pretrained: str | None = None,
    image_size: int | None = None,
    dropout: float = 0.5,
    drop_path: float = 0.0,
    **options: Any,
) -> VideoClassifier:
    """Build a video classifier: backbone (+ pretrained weights), head, then the method(s).

    ``method`` is one registered name, ``"a+b"`` or a list to stack methods in order. For one
    method, ``options`` are its config fields (``create_model("aim", temporal=False)``); for a
    stack, pass one dict per method (``create_model("lora+aim", lora={"rank": 4}, aim={})``).
    """
    methods = parse_methods(method)
    names = [m.name for m in methods]
    if len(methods) == 1:
        per_method = {names[0]: options.pop(names[0], options)}
    else:
        extra = sorted(set(options) - set(names))
        if extra:
            raise TypeError(f"stacked methods take options per method name; got {extra}")
        per_method = {n: options.get(n, {}) for n in names}

    if isinstance(backbone, ViT):
        vit, backbone_name = backbone, "custom"
    else:
        from .checkpoints import create_backbone  # heavy file readers load only when needed

        overrides = {"drop_path": drop_path}
        if image_size is not None:
            overrides["image_size"] = image_size
        vit, backbone_name = create_backbone(backbone, pretrained=pretrained, **overrides), backbone
    vit.proj = None  # classification reads the pooled embedding; CLIP's projection is unused
    model = VideoClassifier(vit, num_classes, num_frames, dropout)
    parts = {}
    for m in methods:
        cfg = m.make_config(per_method[m.name])
        parts[m.name] = list(m.apply(model, cfg))
        per_method[m.name] = asdict(cfg)
    model.set_trainable(parts)
    model.spec = ModelSpec(
        method="+".join(names),
        backbone=backbone_name,
        num_classes=num_classes,
        num_frames=num_frames,
        image_size=vit.cfg.image_size,
        dropout=dropout,
        drop_path=drop_path,
        options=per_method,
    )
    return model

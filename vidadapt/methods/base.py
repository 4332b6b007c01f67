"""What a method is, what it is given and what it gives back.

A method is a config dataclass and a function ``apply(target, cfg) -> MethodParts``: it attaches
modules to ``target.backbone``'s extension sites (``backbones.vit``) and returns, in a
:class:`MethodParts` record, what trains and which of the model's stages it provides. The
factory (``models.create_model``) applies the methods of a stack in order and assembles the
model from their parts; a method never sees the model, so it cannot reach into it.

This module is the bottom of the methods package: the method files import it, and
``methods.registry`` imports the method files.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..backbones.vit import ViT
from ..clip.towers import Clip, ClipOptions
from ..errors import ConfigError

Trainable = Iterable[nn.Module | nn.Parameter]
LossFn = Callable[[Tensor, Tensor, float], Tensor]  # (logits, labels, progress: the fraction
# of training done, 0 to 1, for losses annealed over training) -> loss


@dataclass
class Target:
    """What a method attaches to."""

    backbone: ViT  # the image encoder, with its extension sites
    num_frames: int  # frames per clip T
    classes: list[str]  # class names in label order ("0", "1"... when only a count is known)
    towers: Clip | None = None  # CLIP's towers (``towers.visual`` is ``backbone``) when a
    # method of the stack classifies with text, else None


@dataclass
class MethodParts:
    """What a method gives the model. Every stage is optional; in a stack, at most one method
    may provide each stage (``pool_before_norm`` may come from any)."""

    trainable: list[nn.Module | nn.Parameter] = field(default_factory=list)  # what trains: the
    # method's new modules and any existing module or parameter it unfreezes
    inputs: nn.Module | None = None  # the images the image model encodes, from the clips:
    # ``inputs(video [B, T, 3, H, W]) -> [B, T', 3, H, W]`` (DualPath: frames and frame grids)
    inputs_are_frames: bool = True  # False: the image model's token sequences are not the
    # clip's frames in order (DualPath's frames and grids, sparse tubes' one sequence per
    # clip), so methods that relate frames in time (Method.across_frames) cannot stack
    readout: nn.Module | None = None  # replaces the class-token readout: ``readout(collected,
    # layout, video) -> [B, D]`` on the outputs of the blocks in its ``layers`` and the input
    # clips (EVL's decoder, the side network)
    pool_before_norm: bool = False  # average the frames' class tokens before the final norm
    # (ST-Adapter), not after it
    temporal: nn.Module | None = None  # learned fusion of frame embeddings ``[B, T, E]`` into
    # the clip embedding ``[B, E]`` (replaces the mean over frames)
    head: Head | None = None  # replaces the linear head: ``head(features, context)``
    # -> logits (``methods.text_head.TextHead``)
    context: nn.Module | None = None  # an extra input of the head computed from the last
    # block's tokens: ``context(tokens, layout)`` (X-CLIP's visual context)
    loss: LossFn | None = None  # training loss ``(logits, labels, progress) -> loss``
    # replacing cross-entropy (ActionCLIP's, the evidential one)


class Head(nn.Module):
    """The last stage of a model: clip features ``[B, D]`` (and the context stage's output, if
    any) → logits ``[B, C]``. The hooks below are for state fitted from features rather than
    learned (the engine's ``engine.features`` calls them); a head without such state keeps
    these defaults."""

    @property
    def needs_training_features(self) -> bool:
        """Whether ``fit_features`` needs the training features (a Tip-Adapter cache does)."""
        return False

    def fit_features(self, features: Tensor, labels: Tensor) -> None:
        """Fit state from training clip features ``[N, V, D]`` and labels ``[N, V]``, once
        before training."""

    def select_hparams(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Choose inference hyper-parameters on validation features ``[N, V, D]`` and labels
        ``[N]`` (never on the test split); returns the choice."""
        return {}

    @property
    def names_new_classes(self) -> bool:
        """Whether ``set_classes`` can give it classes it never learned (open-set naming)."""
        return False

    @property
    def logits_are_evidence(self) -> bool:
        """Whether its logits can be read as evidence per class (DEAR's ``exp(logit)``): not
        for a text head's scaled cosines, which all saturate it."""
        return True

    def set_classes(self, classes: Sequence[str]) -> None:
        """Classify among other classes from now on; only a head built from class names can."""
        raise ConfigError("this model's head has a fixed set of learned classes; only a text "
                          "head (a CLIP method) can classify classes it was not trained on")


STAGES = ("inputs", "readout", "temporal", "head", "context", "loss")  # one provider each

ApplyFn = Callable[[Target, Any], MethodParts]


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type  # dataclass holding the method's options
    apply: ApplyFn  # attaches the method to a Target; returns its parts
    exclusive: bool = False  # cannot be combined with other methods (linear probe, full tuning)
    across_frames: bool = False  # its modules relate the image model's images as the clip's
    # frames in time (temporal attention, shifts, convolutions or embeddings over frames)
    # The method's options once `vidadapt export` has folded its layers into the frozen weights
    # (``folding.FoldableLinear``); returning None means nothing of it remains (LoRA). A method
    # without it is exported as it trained.
    export_as: Callable[[Any], Any | None] | None = None
    # The motion maps the method reads given its options ("rgb_diff", "flow"; None: none):
    # the data pipeline adds them to every clip as channels after RGB (``data.motion``).
    reads_motion: Callable[[Any], str | None] | None = None

    @property
    def classifies_with_text(self) -> bool:
        """Whether the method's head is a text head (its config extends ClipOptions), so the
        model needs CLIP's text tower."""
        return issubclass(self.config_cls, ClipOptions)

    def make_config(self, options: dict[str, Any] | Any = None) -> Any:
        """The method's config from a dict of options (unknown keys get the nearest valid
        one), or ``options`` itself when it already is one."""
        if isinstance(options, self.config_cls):
            return options
        options = dict(options or {})
        fields = {f.name for f in dataclasses.fields(self.config_cls)}
        for key in options:
            if key not in fields:
                near = difflib.get_close_matches(key, fields, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                valid = ", ".join(sorted(fields)) or "(none)"
                raise ConfigError(
                    f"method {self.name!r} has no option {key!r}{hint} valid options: {valid}"
                )
        return self.config_cls(**options)


def motion_read(methods: Sequence[Method], configs: dict[str, Any]) -> str:
    """The motion maps a stack's methods read, given their configs by name ("none" if none)."""
    kinds = [m.reads_motion(configs[m.name]) for m in methods if m.reads_motion]
    return next((kind for kind in kinds if kind), "none")

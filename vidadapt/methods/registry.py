"""The method registry: every built-in method, by name, and the rules for stacking them.

Adding a method is one file and one line here. The file defines a config dataclass, an
``apply(target, cfg) -> MethodParts`` function (``methods.base``) and ``METHOD = Method(name,
config class, apply)``; the line below lists that ``METHOD``::

    @dataclass
    class MyConfig:
        rank: int = 4  # ...

    def apply_mine(target: Target, cfg: MyConfig) -> MethodParts:
        ...attach modules to target.backbone's extension sites...
        return MethodParts(trainable=[the new modules, and what the method unfreezes])

    METHOD = Method("mine", MyConfig, apply_mine)

A method defined outside vidadapt joins with :func:`register_method`.

Stacking (``"lora+aim"`` or ``["lora", "aim"]``): the methods are applied in the listed order,
each to the backbone the previous ones left, and ``parameter_counts()`` counts each one's tunable
parameters under its name (a parameter that two methods declare counts for the first). Any
methods stack, except:

* an ``exclusive`` method (``linear``, ``full``): it defines the whole trainable set alone;
* the same method twice: its options would be ambiguous (and a second LoRA would wrap layers
  the first already wrapped);
* two methods providing the same stage of the model (``MethodParts``: two text heads such as
  ``coop+zero_shot``, two temporal fusions, EVL's readout twice), and the pairs the factory
  refuses because their stages do not fit together (``models.create_model``: EVL's decoder
  output is not in CLIP's joint space, so ``evl`` takes no text head; ST-Adapter's average
  before the final norm leaves no frames for a learned temporal fusion);
* a method whose inputs stage gives images that are not the clip's frames in time (DualPath's
  frames and grids) with a method that relates frames in time (``Method.across_frames``: AIM,
  ST-Adapter, ZeroI2V, EVL, X-CLIP, ActionCLIP, the side network).

Everything else composes by construction. Sites are lists, so methods sharing a site run in
stack order (``mam+prefix`` gives every attention two prefix sets, ``adapter+aim`` two modules
after it); LoRA and BitFit act only on the image model's own layers
(``ViT.named_image_modules``), never on another method's modules; VPT updates the token layout,
so later sites still find the patch tokens. A method reusing a frozen module sees what others
did to it: AIM's temporal attention runs through LoRA's wrapped qkv (and ZeroI2V's adapters)
and prefix tuning's prefixes.
Order matters where two methods touch the same tokens: in ``vpt+aim`` AIM's temporal embedding
is added to the prompts, in ``aim+vpt`` it is not. A backbone method composes with a CLIP
method's text head (``lora+coop``, ``aim+zero_shot``, ``st_adapter+clip_adapter``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..errors import ConfigError
from . import (
    actionclip,
    adapters,
    aim,
    baselines,
    bitfit,
    clip_adapter,
    cocoop,
    coop,
    dualpath,
    efficient_prompt,
    evidential,
    evl,
    lora,
    motion_prompt,
    prefix,
    side_network,
    sparse_tubes,
    st_adapter,
    tip_adapter,
    vpt,
    xclip,
    zero_shot,
    zeroi2v,
)
from .base import Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # on the image backbone
        baselines.LINEAR, baselines.FULL, aim.METHOD, st_adapter.METHOD, evl.METHOD,
        vpt.METHOD, lora.METHOD, prefix.METHOD, adapters.ADAPTER, adapters.MAM, bitfit.METHOD,
        zeroi2v.METHOD, side_network.METHOD, dualpath.METHOD, motion_prompt.METHOD,
        sparse_tubes.METHOD, evidential.METHOD,
        # with CLIP's text tower as the classifier
        zero_shot.METHOD, coop.METHOD, cocoop.METHOD, clip_adapter.METHOD, tip_adapter.METHOD,
        efficient_prompt.METHOD, actionclip.METHOD, xclip.METHOD,
    )
}


def register_method(method: Method) -> Method:
    """Make a method defined outside vidadapt available by name (configs, ``create_model``)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        near = difflib.get_close_matches(name, METHODS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"unknown method {name!r}{hint} available: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def parse_methods(method: str | Iterable[str]) -> list[Method]:
    """``"aim"``, ``"lora+aim"`` or ``["lora", "aim"]`` → methods, checking they can stack."""
    names = method.split("+") if isinstance(method, str) else list(method)
    methods = [get_method(n.strip()) for n in names]
    if len(methods) > 1:
        lone = [m.name for m in methods if m.exclusive]
        if lone:
            raise ConfigError(
                f"method {lone[0]!r} cannot be combined with others ({'+'.join(names)}): "
                "it defines the whole trainable set on its own"
            )
        if len({m.name for m in methods}) != len(methods):
            raise ConfigError(f"method list {'+'.join(names)} names a method twice")
    return methods

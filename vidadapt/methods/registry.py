"""The method registry: a method is a config dataclass plus a function that attaches its modules
to a ``VideoClassifier`` and returns what it trains.

Registering a method is one decorator in its own file plus an import line in
``vidadapt/methods/__init__.py``::

    @dataclass
    class MyConfig:
        rank: int = 4  # ...

    @register_method("mine", MyConfig)
    def apply_mine(model: VideoClassifier, cfg: MyConfig) -> Trainable:
        ...attach modules to model.backbone's extension sites...
        return [the new modules, plus any existing module the method unfreezes]

Stacking (``"lora+aim"`` or ``["lora", "aim"]``): the methods are applied in the listed order,
each to the model the previous ones left, and ``parameter_counts()`` counts each one's tunable
parameters under its name (a parameter that two methods declare counts for the first). Any
methods stack, except:

* an ``exclusive`` method (``linear``, ``full``): it defines the whole trainable set alone;
* the same method twice: its options would be ambiguous (and a second LoRA would wrap layers
  the first already wrapped).

Everything else composes by construction. Sites are lists, so methods sharing a site run in
stack order (``mam+prefix`` gives every attention two prefix sets, ``adapter+aim`` two modules
after it); LoRA and BitFit act only on the image model's own layers
(``ViT.named_image_modules``), never on another method's modules; VPT updates the token layout,
so later sites still find the patch tokens. A method reusing a frozen module sees what others
did to it: AIM's temporal attention runs through LoRA's wrapped qkv and prefix tuning's prefixes.
Order matters where two methods touch the same tokens: in ``vpt+aim`` AIM's temporal embedding
is added to the prompts, in ``aim+vpt`` it is not.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models import VideoClassifier

Trainable = Iterable[nn.Module | nn.Parameter]
ApplyFn = Callable[["VideoClassifier", Any], Trainable]


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type  # dataclass holding the method's options
    apply: ApplyFn  # attaches the method; returns the modules/parameters that train
    exclusive: bool = False  # cannot be combined with other methods (linear probe, full tuning)

    def make_config(self, options: dict[str, Any] | None = None) -> Any:
        """The method's config from a dict of options; unknown keys get the nearest valid one."""
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


METHODS: dict[str, Method] = {}


def register_method(name: str, config_cls: type, exclusive: bool = False):
    """Decorator registering ``apply(model, cfg) -> trainable`` under ``name``."""

    def decorate(apply: ApplyFn) -> ApplyFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, config_cls, apply, exclusive)
        return apply

    return decorate


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

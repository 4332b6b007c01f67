"""Parameter-efficient methods. Each is one module registering itself; import it here."""

# Imported for their @register_method side effect (hence the noqa).
from . import adapters, aim, baselines, bitfit, evl, lora, prefix, st_adapter, vpt  # noqa: F401
from .registry import METHODS, Method, get_method, parse_methods, register_method

# CLIP methods, whose classifier comes from the text tower (vidadapt.clip).
from . import actionclip, clip_adapter, cocoop, coop, efficient_prompt  # noqa: F401  # isort: skip
from . import tip_adapter, xclip, zero_shot  # noqa: F401  # isort: skip

__all__ = ["METHODS", "Method", "get_method", "parse_methods", "register_method"]

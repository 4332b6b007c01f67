"""Parameter-efficient methods. Each is one module registering itself; import it here."""

from . import aim, baselines, st_adapter  # noqa: F401  (registration side effect)
from .registry import METHODS, Method, get_method, parse_methods, register_method

__all__ = ["METHODS", "Method", "get_method", "parse_methods", "register_method"]

"""vidadapt: parameter-efficient image-to-video transfer learning on one ViT."""

__version__ = "0.1.0"

from .backbones import ViT, ViTConfig, preset_config  # noqa: E402

__all__ = ["ViT", "ViTConfig", "__version__", "preset_config"]

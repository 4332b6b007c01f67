"""vidadapt: parameter-efficient image-to-video transfer learning on one ViT."""

__version__ = "0.1.0"

from .backbones import ViT, ViTConfig, preset_config  # noqa: E402
from .checkpoints import create_backbone, load_image_encoder  # noqa: E402
from .clip.model import create_clip_model, load_clip  # noqa: E402
from .clip.save import save_clip  # noqa: E402

__all__ = [
    "ViT", "ViTConfig", "__version__", "create_backbone", "create_clip_model", "load_clip",
    "load_image_encoder", "preset_config", "save_clip",
]

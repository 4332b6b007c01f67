"""Align a text tower with the demo's image model: the synthetic CLIP of the text-side demos.

The CLIP methods (zero-shot, CoOp, CoCoOp, CLIP-Adapter, Tip-Adapter, X-CLIP, ActionCLIP, Ju et
al.) need an image model whose embeddings live in one space with a text tower's. No CLIP weights
ship, so this script makes a small one the way LiT does (Zhai et al., 2022, "locked-image text
tuning"): the demo's image model (``builtin:vit_tiny_synthetic``, trained on still frames) stays
frozen, and a text tower plus a projection on each side learn, with CLIP's contrastive loss, to
match it on *still frames* and their captions ("a small faint red square at the top left").

Like a real image CLIP it knows what a frame shows (shape, colour, size, place, opacity) and
nothing about time: zero-shot it recognises the static classes by their shape names, and a
"moving left" clip only by where the object happens to be. The video methods must add time.

    python -m vidadapt.demo.pretrain_clip --out vidadapt/assets/clip_tiny_synthetic

The shipped folder was made with the defaults (seed 0; about 10 minutes on 2 CPU cores). It is a
Hugging Face ``CLIPModel`` folder (``vidadapt.clip.save``), fp16, read as
``builtin:clip_tiny_synthetic`` with ``backbone: vit_tiny_clip``.
"""

from __future__ import annotations

import argparse
import colorsys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import ViT, preset_config
from ..checkpoints import create_backbone
from ..clip.prompts import resolve_templates
from ..clip.save import save_clip
from ..clip.text import TextTransformer, text_preset
from ..clip.tokenizer import CONTEXT_LENGTH, ClipTokenizer  # CLIP's 77 tokens
from ..clip.towers import DEFAULT_LOGIT_SCALE, Clip, readable
from ..data.synthetic import CLASSES, ObjectTrack
from ..data.transforms import NORMALIZATION
from .pretrain import SHAPES, sample_still

# Hue (0..1) upper bounds of the colour names; red wraps around.
HUES = [(1 / 24, "red"), (3 / 24, "orange"), (5 / 24, "yellow"), (10 / 24, "green"),
        (13 / 24, "cyan"), (17 / 24, "blue"), (19 / 24, "purple"), (23 / 24, "pink"),
        (1.0, "red")]
CAPTION_TEMPLATES = ["a photo of {}.", "a picture of {}.", "an image of {}.", "a video of {}.",
                     "a frame of {}.", "{}"]
KEEP = 0.6  # chance that a caption names each attribute besides the shape
TEXT_WIDTH, TEXT_DEPTH = 128, 3  # text tower; the joint space is vit_tiny_clip's embed_dim


def colour_name(rgb: np.ndarray) -> str:
    hue = colorsys.rgb_to_hsv(*rgb)[0]
    return next(name for bound, name in HUES if hue < bound)


def place_phrase(centre: np.ndarray, size: int) -> str:
    """Where the object is, in thirds of the frame: "at the top left", "on the right", ..."""
    column = ("left", "", "right")[min(int(3 * centre[0] / size), 2)]
    row = ("top", "", "bottom")[min(int(3 * centre[1] / size), 2)]
    if row and column:
        return f"at the {row} {column}"
    if row or column:
        return f"{'at' if row else 'on'} the {row or column}"
    return "in the middle"


def describe(still: ObjectTrack, size: int, rng: np.random.Generator) -> str:
    """A caption of one frame's object; every attribute but the shape is named with chance KEEP
    (so short and long captions both occur, as on the web)."""
    radius, opacity = still.radius[0] / size, still.opacity[0]
    size_word = "small" if radius < 0.12 else "big" if radius > 0.2 else ""
    opacity_word = "faint" if opacity < 0.4 else "half transparent" if opacity < 0.8 else ""
    adjectives = [size_word, opacity_word, colour_name(still.colour)]
    words = [w for w in adjectives if w and rng.random() < KEEP] + [still.shape]
    if rng.random() < KEEP:
        words.append(place_phrase(still.centre[0], size))
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format("a " + " ".join(words))


def render_captioned(rng: np.random.Generator, n: int, size: int) -> tuple[Tensor, list]:
    """``n`` stills, normalised ``[n, 3, H, W]``, and their objects (captioned at each use)."""
    images, stills = zip(*(sample_still(rng, size) for _ in range(n)), strict=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["clip"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # [n, 3, H, W]
    return (x - mean) / std, list(stills)


def vocabulary_texts(rng: np.random.Generator, stills: list, size: int) -> list[str]:
    """Texts the tokenizer's merges are learned from: captions, plus the words a user's prompts
    will hold (class names, template sets), as a real CLIP's web-scale vocabulary would."""
    captions = [describe(s, size, rng) for s in stills[:5000]]
    prompts = [t.format(readable(c)) for t in resolve_templates("video") for c in CLASSES]
    return captions + prompts


@torch.no_grad()
def image_features(visual: nn.Module, images: Tensor, batch: int = 1024) -> Tensor:
    """The frozen tower's pooled embeddings ``[n, D]`` (before any projection)."""
    return torch.cat([visual(images[i : i + batch]) for i in range(0, len(images), batch)])


def contrastive_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy over the batch; row i of each side is a pair."""
    logits = logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_text_tower(
    features: Tensor, stills: list, tokenizer: ClipTokenizer, steps: int, batch: int, lr: float,
    rng: np.random.Generator, size: int, log_every: int = 100,
) -> tuple[TextTransformer, Tensor, float]:
    """Text tower, image projection ``[D, E]`` and log logit scale that align captions with the
    frozen image ``features`` ``[n, D]``."""
    joint_dim = preset_config("vit_tiny_clip").embed_dim
    config = text_preset("clip_text_tiny", vocab_size=tokenizer.vocab_size, width=TEXT_WIDTH,
                         depth=TEXT_DEPTH, heads=TEXT_WIDTH // 64, mlp_dim=4 * TEXT_WIDTH,
                         embed_dim=joint_dim, context_length=CONTEXT_LENGTH)
    text = TextTransformer(config)
    width = features.shape[1]
    image_proj = nn.Parameter(torch.randn(width, joint_dim) * width**-0.5)
    logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*text.parameters(), image_proj, logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(1, steps + 1):
        index = rng.choice(len(stills), size=batch, replace=False)
        tokens = tokenizer([describe(stills[i], size, rng) for i in index], CONTEXT_LENGTH)
        loss = contrastive_loss(features[index] @ image_proj, text(tokens), logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            logit_scale.clamp_(0, DEFAULT_LOGIT_SCALE)  # CLIP's cap: exp(scale) <= 100
        if step % log_every == 0 or step == steps:
            print(f"step {step}/{steps}  loss {loss.item():.3f}  scale "
                  f"{logit_scale.exp().item():.1f}  {time.time() - start:.0f}s", flush=True)
    return text, image_proj.detach(), logit_scale.item()


@torch.no_grad()
def zero_shot_report(clip: Clip, images: Tensor, stills: list, size: int) -> dict[str, float]:
    """Zero-shot still-frame accuracy of the shape, colour and column names."""
    image = F.normalize(clip.visual.encode(images), dim=-1)  # [n, E]
    questions = {
        "shape": (SHAPES, lambda s: s.shape, "a photo of a {}."),
        "colour": (sorted({n for _, n in HUES}), lambda s: colour_name(s.colour),
                   "a photo of a {} object."),
        "column": (("left", "right"), lambda s: ("left", "right")[int(s.centre[0, 0] > size / 2)],
                   "a photo of an object on the {}."),
    }
    report = {}
    for question, (names, truth, template) in questions.items():
        tokens = clip.tokenizer([template.format(n) for n in names], CONTEXT_LENGTH)
        text = F.normalize(clip.text(tokens), dim=-1)  # [K, E]
        predicted = (image @ text.T).argmax(-1)  # [n]
        labels = torch.tensor([names.index(truth(s)) for s in stills])
        report[question] = (predicted == labels).float().mean().item()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="vidadapt/assets/clip_tiny_synthetic")
    parser.add_argument("--image", default="builtin:vit_tiny_synthetic", help="frozen image tower")
    parser.add_argument("--stills", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    visual = create_backbone("vit_tiny", pretrained=args.image).eval()
    size = visual.cfg.image_size
    images, stills = render_captioned(rng, args.stills, size)
    tokenizer = ClipTokenizer.learn(vocabulary_texts(rng, stills, size))
    text, image_proj, logit_scale = train_text_tower(
        image_features(visual, images), stills, tokenizer, args.steps, args.batch, args.lr, rng,
        size,
    )
    clip_visual = ViT(preset_config("vit_tiny_clip"))  # the same ViT + the learned projection
    clip_visual.load_state_dict({**visual.state_dict(), "proj": image_proj})
    clip = Clip(clip_visual.eval(), text.eval(), tokenizer, logit_scale)
    held_out, held_out_stills = render_captioned(np.random.default_rng(args.seed + 1), 2000, size)
    report = zero_shot_report(clip, held_out, held_out_stills, size)
    print("zero-shot on held-out stills: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    metadata = {"source": "vidadapt.demo.pretrain_clip", "seed": str(args.seed),
                "image": args.image}
    save_clip(clip, args.out, dtype=torch.float16, metadata=metadata)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

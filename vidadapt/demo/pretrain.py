"""Pre-train the demo's image model on synthetic *still images*.

The demo needs what real users start from: an image model that knows objects but has never
seen motion. This script trains ``vit_tiny`` on single frames of the synthetic renderer to name
the object's shape and to read off its colour, position, size, orientation and opacity. It never
sees two frames of one clip, so it learns nothing about time; the video methods must add that.

    python -m vidadapt.demo.pretrain --out vidadapt/assets/vit_tiny_synthetic.safetensors

The shipped file was made with the defaults (seed 0); the run takes about 10 minutes on 2 CPU
cores. Weights are stored in fp16, in the timm layout that ``vidadapt.load_image_encoder`` reads.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..backbones import ViT, preset_config
from ..data.synthetic import (
    CLASSES,
    ObjectTrack,
    object_coverage,
    sample_background,
    sample_track,
)
from ..data.transforms import NORMALIZATION

SHAPES = ("square", "triangle", "bar", "circle", "ring", "cross")
SYMMETRY = {"square": 4, "triangle": 3, "bar": 2, "circle": 1, "ring": 1, "cross": 4}
FRAME_FIELDS = ("centre", "angle", "radius", "opacity")  # per-frame fields of a track
NUM_TARGETS = 3 + 2 + 1 + 2 + 1  # colour, centre, radius, orientation (cos, sin), opacity


def sample_still(rng: np.random.Generator, size: int) -> tuple[np.ndarray, ObjectTrack]:
    """One random frame of a random synthetic clip: image ``[H, W, 3]`` uint8 and the object as
    that frame shows it (a one-frame track)."""
    frames = 8
    background = sample_background(rng, size)
    track = sample_track(int(rng.integers(len(CLASSES))), rng, frames, size)
    t = int(rng.integers(frames))
    still = replace(track, **{f: getattr(track, f)[t : t + 1] for f in FRAME_FIELDS})
    alpha = object_coverage(still, size)[0, ..., None] * still.opacity[0]  # [H, W, 1]
    image = background * (1 - alpha) + track.colour * alpha
    return (image * 255 + 0.5).astype(np.uint8), still


def render_still(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """A random still (``sample_still``), its shape id, and regression targets (each scaled to
    about [-1, 1])."""
    image, still = sample_still(rng, size)
    k = SYMMETRY[still.shape]  # orientation is only defined up to the shape's symmetry
    angle = still.angle[0]
    targets = np.concatenate([
        still.colour * 2 - 1,
        still.centre[0] / size * 2 - 1,
        [still.radius[0] / size * 8 - 1],
        [math.cos(k * angle), math.sin(k * angle)] if k > 1 else [0.0, 0.0],
        [still.opacity[0] * 2 - 1],
    ])
    return image, SHAPES.index(still.shape), targets


def make_batch(rng: np.random.Generator, n: int, size: int) -> tuple[Tensor, Tensor, Tensor]:
    images, shapes, targets = zip(*(render_still(rng, size) for _ in range(n)), strict=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["clip"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255  # [N, 3, H, W]
    return (x - mean) / std, torch.tensor(shapes), torch.tensor(np.stack(targets)).float()


def pretrain(steps: int, batch: int, lr: float, seed: int, log_every: int = 100) -> ViT:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = preset_config("vit_tiny")
    vit = ViT(cfg)
    heads = nn.Linear(cfg.width, len(SHAPES) + NUM_TARGETS)
    params = list(vit.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(1, steps + 1):
        x, shape, target = make_batch(rng, batch, cfg.image_size)
        out = heads(vit(x))  # [N, shapes + targets]
        shape_loss = nn.functional.cross_entropy(out[:, : len(SHAPES)], shape)
        target_loss = nn.functional.mse_loss(out[:, len(SHAPES) :], target)
        loss = shape_loss + 4 * target_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            acc = (out[:, : len(SHAPES)].argmax(-1) == shape).float().mean().item()
            print(
                f"step {step}/{steps}  shape CE {shape_loss.item():.3f} (acc {acc:.2f})  "
                f"target MSE {target_loss.item():.4f}  {time.time() - start:.0f}s",
                flush=True,
            )
    return vit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="vidadapt/assets/vit_tiny_synthetic.safetensors")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    vit = pretrain(args.steps, args.batch, args.lr, args.seed)
    state = {k: v.detach().half().contiguous() for k, v in vit.state_dict().items()}
    metadata = {"source": "vidadapt.demo.pretrain", "seed": str(args.seed)}
    save_file(state, args.out, metadata=metadata)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

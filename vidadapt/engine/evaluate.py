"""Multi-view evaluation: softmax averaged over views, top-k, per-class accuracy, confusion.

Test batches hold ``[B, V, T, 3, H, W]`` (V = clips × crops views per video) or, with a single
view, ``[B, T, 3, H, W]``. Every rank scores its own shard; the scores are gathered and keyed
by dataset index, so a sampler never needs padding (which would count videos twice).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .distributed import DistInfo, all_gather_objects
from .logs import pyplot

logger = logging.getLogger("vidadapt")


@dataclass
class Scores:
    """Class probabilities of every evaluated video, ordered by dataset index."""

    probs: Tensor  # [N, C] softmax averaged over views
    labels: Tensor  # [N] true labels (-1 where unknown)
    indices: Tensor  # [N] dataset indices
    logits: Tensor  # [N, C] logits averaged over views (open-set scores read them)


def view_average(model: nn.Module, video: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over classes and logits, each averaged over views: ``[B, V, T, 3, H, W]`` or
    ``[B, T, ...]`` → ``[B, C]``, ``[B, C]``."""
    if video.ndim == 5:
        video = video.unsqueeze(1)  # [B, 1, T, 3, H, W]
    B, V = video.shape[:2]
    logits = model(video.flatten(0, 1)).float().view(B, V, -1)  # [B, V, C]
    return logits.softmax(dim=-1).mean(dim=1), logits.mean(dim=1)  # [B, C], [B, C]


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    dist: DistInfo | None = None,
    progress: bool = False,
) -> Scores:
    """Score every batch (``{"video", "label", "index"}``) and gather all ranks' results."""
    dist = dist or DistInfo()
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    probs, labels, indices, logits = [], [], [], []
    for batch in tqdm(batches, desc="eval", disable=not progress, leave=False):
        if batch["video"] is None:  # no video of the batch could be read
            continue
        video = batch["video"].to(device, non_blocking=True)
        with autocast:
            batch_probs, batch_logits = view_average(model, video)
        probs.append(batch_probs.cpu())
        logits.append(batch_logits.cpu())
        labels.append(torch.as_tensor(batch["label"]))
        indices.append(torch.as_tensor(batch["index"]))
    model.train(was_training)
    local = tuple(map(torch.cat, (probs, labels, indices, logits))) if probs else None
    shards = [s for s in all_gather_objects(local, dist) if s is not None]
    if not shards:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    gathered = (torch.cat(parts) for parts in zip(*shards, strict=True))
    all_probs, all_labels, all_indices, all_logits = gathered
    order = all_indices.argsort()
    return Scores(all_probs[order], all_labels[order], all_indices[order], all_logits[order])


def left_out(dataset: Any, scored: int, dist: DistInfo) -> dict[str, str]:
    """The unreadable files an evaluation of ``dataset`` left out, from every rank (path →
    reason), with one log line when there are any. ``scored``: the videos it did score."""
    local = dataset.skipped() if hasattr(dataset, "skipped") else {}
    skipped: dict[str, str] = {}
    for part in all_gather_objects(local, dist):
        skipped.update(part)
    if skipped and dist.is_main:
        logger.warning("scored %d of %d videos: %d unreadable one(s) left out, not replaced "
                       "(listed under 'skipped' in the metrics file)",
                       scored, scored + len(skipped), len(skipped))
    return dict(sorted(skipped.items()))


def classification_metrics(scores: Scores, classes: list[str]) -> dict[str, Any]:
    """top-1/top-5 (%), mean class accuracy (%), per-class accuracy (%) and confusion matrix."""
    num_classes = len(classes)
    labels = scores.labels.long()
    ranked = scores.probs.topk(min(5, num_classes), dim=-1).indices  # [N, k]
    hits = ranked == labels[:, None]  # [N, k]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [true, predicted]
    confusion.index_put_((labels, ranked[:, 0]), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(dim=1)
    per_class = confusion.diag().double() / support.clamp(min=1) * 100
    present = support > 0
    return {
        "num_videos": int(labels.numel()),
        "top1": float(hits[:, 0].double().mean() * 100),
        "top5": float(hits.any(dim=1).double().mean() * 100),
        # averaged over the classes that have test videos
        "mean_class_accuracy": float(per_class[present].mean()),
        "per_class_accuracy": {
            name: (float(acc) if has else None)
            for name, acc, has in zip(classes, per_class, present.tolist(), strict=True)
        },
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }


def write_metrics(metrics: dict[str, Any], out_dir: str | os.PathLike, name: str) -> list[Path]:
    """``<name>.json`` plus, if matplotlib is installed, ``<name>_confusion.png`` and
    ``<name>_per_class.png``. Returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(metrics, indent=1))
    plt = pyplot("the plots")
    return [json_path] if plt is None else [json_path, *_plot(metrics, out_dir, name, plt)]


def _plot(metrics: dict[str, Any], out_dir: Path, name: str, plt) -> list[Path]:
    classes = metrics["classes"]
    # Tick labels become unreadable beyond a few dozen classes; the colours still show structure.
    show_names = len(classes) <= 50
    side = min(4 + 0.25 * len(classes), 24)

    confusion = torch.tensor(metrics["confusion_matrix"], dtype=torch.float64)
    row_normalised = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(row_normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set(xlabel="predicted", ylabel="true", title=f"{name}: top-1 {metrics['top1']:.2f}%")
    if show_names:
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
    confusion_path = out_dir / f"{name}_confusion.png"
    fig.tight_layout()
    fig.savefig(confusion_path, dpi=100)
    plt.close(fig)

    accuracy = [a if a is not None else 0.0 for a in metrics["per_class_accuracy"].values()]
    fig, ax = plt.subplots(figsize=(side, 4))
    ax.bar(range(len(classes)), accuracy, color="tab:blue")
    ax.axhline(metrics["mean_class_accuracy"], color="tab:red", linestyle="--", label="mean")
    ax.set(ylabel="accuracy (%)", ylim=(0, 100), title=f"{name}: per-class accuracy")
    if show_names:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.legend()
    bars_path = out_dir / f"{name}_per_class.png"
    fig.tight_layout()
    fig.savefig(bars_path, dpi=100)
    plt.close(fig)
    return [confusion_path, bars_path]

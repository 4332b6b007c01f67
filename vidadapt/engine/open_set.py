"""Open-set recognition: a model taught some classes must also say "none of them".

The protocol (``data.known_classes``, ``vidadapt eval --open-set``): the model trains on the
known classes' videos only; at test every video counts, the unknown classes' ones labelled -1.
Each video gets a *known-ness score* from the model's view-averaged outputs (:data:`SCORES`,
higher = more likely a known class). Reported per score:

* ``auroc``: how well the score separates known from unknown test videos (threshold-free);
* ``open_macro_f1``: macro F1 over the known classes plus "unknown", predicting the top class
  when the score passes a threshold and "unknown" otherwise. The threshold is chosen on the
  validation split (the one maximising its open macro-F1), never on test;
* closed-set accuracy: top-1 on the known test videos alone.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.annotations import Annotation
from ..errors import ConfigError
from .evaluate import Scores

logger = logging.getLogger("vidadapt")

UNKNOWN = -1  # the label of an unknown class's video


def known_subset(annotation: Annotation, known: list[str], keep_unknown: bool) -> Annotation:
    """The known classes' videos, labels renumbered in ``known``'s order; with
    ``keep_unknown`` the other videos too, labelled :data:`UNKNOWN`."""
    missing = [name for name in known if name not in annotation.classes]
    if missing:
        near = difflib.get_close_matches(missing[0], annotation.classes, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"data.known_classes: {missing[0]!r}{hint} is not a class of "
                          f"{annotation.source}")
    relabel = {annotation.classes.index(name): i for i, name in enumerate(known)}
    records = [replace(r, label=relabel.get(r.label, UNKNOWN)) for r in annotation.records
               if keep_unknown or r.label in relabel]
    return Annotation(records, list(known), annotation.source)


def evidential_uncertainty(logits: Tensor) -> Tensor:
    """DEAR's uncertainty ``K / S``: evidence ``exp(logits)`` (clamped), Dirichlet strength ``S =
    sum(evidence + 1)`` over the K classes; 1 = no evidence at all."""
    evidence = logits.clamp(-10, 10).exp()
    return logits.shape[-1] / (evidence + 1).sum(dim=-1)


# score name -> known-ness from (view-averaged probabilities [N, C], logits [N, C]) -> [N]
SCORES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "max_softmax": lambda probs, logits: probs.amax(dim=-1),
    "max_logit": lambda probs, logits: logits.amax(dim=-1),
    "energy": lambda probs, logits: torch.logsumexp(logits, dim=-1),  # minus the free energy
    "evidential": lambda probs, logits: -evidential_uncertainty(logits),
}


def auroc(known: Tensor, unknown: Tensor) -> float:
    """P(score of a known video > score of an unknown one), ties counting half."""
    scores = torch.cat([known, unknown]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores[order].unique_consecutive():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_known, n_unknown = len(known), len(unknown)
    wins = ranks[:n_known].sum() - n_known * (n_known + 1) / 2
    return float(wins / (n_known * n_unknown))


def open_predictions(probs: Tensor, score: Tensor, threshold: float) -> Tensor:
    """The top class where ``score >= threshold``, else :data:`UNKNOWN`."""
    return torch.where(score >= threshold, probs.argmax(dim=-1), UNKNOWN)


def open_macro_f1(predicted: Tensor, labels: Tensor, num_known: int) -> float:
    """Macro F1 (%) over the known classes and "unknown", as one more class."""
    f1s = []
    for c in [*range(num_known), UNKNOWN]:
        tp = ((predicted == c) & (labels == c)).sum().item()
        fp = ((predicted == c) & (labels != c)).sum().item()
        fn = ((predicted != c) & (labels == c)).sum().item()
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    return 100 * sum(f1s) / len(f1s)


def best_threshold(probs: Tensor, score: Tensor, labels: Tensor) -> float:
    """The threshold maximising open macro-F1 on these (validation) videos: every score value
    is a candidate."""
    candidates = score.unique()
    f1 = [open_macro_f1(open_predictions(probs, score, t.item()), labels, probs.shape[1])
          for t in candidates]
    return float(candidates[int(torch.tensor(f1).argmax())])


def open_set_metrics(val: Scores, test: Scores, classes: list[str]) -> dict[str, Any]:
    """Every score's AUROC and open macro-F1 on ``test`` with its threshold from ``val``, and the
    closed-set accuracy on the known test videos."""
    for name, scores in (("validation", val), ("test", test)):
        if not (scores.labels == UNKNOWN).any() or (scores.labels == UNKNOWN).all():
            raise ConfigError(f"open set: the {name} split needs videos of known and of "
                              "unknown classes (data.known_classes leaves the others unknown)")
    known = test.labels != UNKNOWN
    closed = (test.probs[known].argmax(dim=-1) == test.labels[known]).double().mean()
    result: dict[str, Any] = {
        "known_classes": list(classes),
        "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
        "closed_set_top1": float(closed * 100),
        "scores": {},
    }
    for name, fn in SCORES.items():
        val_score, test_score = fn(val.probs, val.logits), fn(test.probs, test.logits)
        threshold = best_threshold(val.probs, val_score, val.labels)
        predicted = open_predictions(test.probs, test_score, threshold)
        result["scores"][name] = {
            "auroc": auroc(test_score[known], test_score[~known]),
            "open_macro_f1": open_macro_f1(predicted, test.labels, len(classes)),
            "threshold": threshold,
            "known": test_score[known].tolist(),  # for the histograms
            "unknown": test_score[~known].tolist(),
        }
    best = max(result["scores"], key=lambda n: result["scores"][n]["auroc"])
    result["best_score"] = best
    return result


def plot_histograms(metrics: dict[str, Any], path: Path) -> Path | None:
    """One panel per score: the known and unknown test videos' scores and the threshold chosen
    on validation (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; skipping the score histograms")
        return None
    scores = metrics["scores"]
    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3.2))
    for ax, (name, s) in zip(axes, scores.items(), strict=True):
        ax.hist(s["known"], bins=30, alpha=0.6, color="tab:blue", label="known")
        ax.hist(s["unknown"], bins=30, alpha=0.6, color="tab:red", label="unknown")
        ax.axvline(s["threshold"], color="black", linestyle="--", label="threshold (val)")
        ax.set(title=f"{name}: AUROC {s['auroc']:.3f}", xlabel="known-ness score")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def open_set_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers: closed-set top-1 and each score's AUROC and open macro-F1."""
    return {
        "closed_set_top1": round(metrics["closed_set_top1"], 2),
        "best_score": metrics["best_score"],
        **{name: {"auroc": round(s["auroc"], 4), "open_macro_f1": round(s["open_macro_f1"], 2)}
           for name, s in metrics["scores"].items()},
    }


def write_open_set(metrics: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """``<name>.json`` and, with matplotlib, ``<name>_scores.png``; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(metrics, indent=1))
    plot = plot_histograms(metrics, out_dir / f"{name}_scores.png")
    return [path] if plot is None else [path, plot]

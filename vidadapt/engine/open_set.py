"""Open-set recognition: a model taught some classes must also say "none of them".

The protocol (``data.known_classes``, ``vidadapt eval --open-set``): the model trains on the
known classes' videos only; at test every video counts, the unknown classes' ones labelled after
the known classes (K and up), so that a model that can name classes it never learned (a text
head) can be asked to name them.
Each video gets a *known-ness score* from the model's view-averaged outputs (:data:`SCORES`,
higher = more likely a known class). Reported per score:

* ``auroc``: how well the score separates known from unknown test videos (threshold-free);
* ``open_macro_f1``: macro F1 over the known classes plus "unknown", predicting the top class
  when the score passes a threshold and "unknown" otherwise. The threshold is chosen on the
  validation split (the one maximising its open macro-F1), never on test;
* closed-set accuracy: top-1 on the known test videos alone;
* for a text head (CLIP methods), zero-shot naming: the unknown test videos that the best
  score rejects, classified among the unknown classes' names (``naming_top1``), and every test
  video classified among all names (``all_classes_top1``).
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.annotations import Annotation
from ..errors import ConfigError
from .evaluate import Scores
from .logs import pyplot

UNKNOWN = -1  # the prediction "none of the known classes"


def known_subset(annotation: Annotation, known: list[str], keep_unknown: bool) -> Annotation:
    """The known classes' videos, labels renumbered in ``known``'s order; with
    ``keep_unknown`` the other videos too, their classes listed after the known ones."""
    missing = [name for name in known if name not in annotation.classes]
    if missing:
        near = difflib.get_close_matches(missing[0], annotation.classes, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"data.known_classes: {missing[0]!r}{hint} is not a class of "
                          f"{annotation.source}")
    unknown = [name for name in annotation.classes if name not in known] if keep_unknown else []
    order = {name: i for i, name in enumerate([*known, *unknown])}
    relabel = {i: order[name] for i, name in enumerate(annotation.classes) if name in order}
    records = [replace(r, label=relabel[r.label]) for r in annotation.records
               if r.label in relabel]
    return Annotation(records, [*known, *unknown], annotation.source)


def open_labels(labels: Tensor, num_known: int) -> Tensor:
    """Labels with every unknown class (``num_known`` and up) as :data:`UNKNOWN`."""
    return torch.where(labels >= num_known, UNKNOWN, labels)


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
    """P(score of a known video > score of an unknown one), ties counting half (the
    Mann-Whitney statistic from the scores' ranks, ties sharing their mean rank)."""
    scores = torch.cat([known, unknown]).double()
    _, inverse, counts = scores.unique(return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0) - (counts - 1) / 2)[inverse]  # 1-based mean rank of each score
    n_known, n_unknown = len(known), len(unknown)
    wins = ranks[:n_known].sum() - n_known * (n_known + 1) / 2
    return float(wins / (n_known * n_unknown))


def open_predictions(probs: Tensor, score: Tensor, threshold: float) -> Tensor:
    """The top class where ``score >= threshold``, else :data:`UNKNOWN`."""
    return torch.where(score >= threshold, probs.argmax(dim=-1), UNKNOWN)


def open_macro_f1(predicted: Tensor, labels: Tensor, num_known: int) -> float:
    """Macro F1 (%) over the known classes and "unknown", as one more class, counting the
    classes that occur among the labels or the predictions (as scikit-learn's macro F1, which
    DEAR reports)."""
    f1s = []
    for c in [*range(num_known), UNKNOWN]:
        tp = ((predicted == c) & (labels == c)).sum().item()
        fp = ((predicted == c) & (labels != c)).sum().item()
        fn = ((predicted != c) & (labels == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return 100 * sum(f1s) / len(f1s)


def best_threshold(probs: Tensor, score: Tensor, labels: Tensor) -> float:
    """The threshold maximising open macro-F1 on these (validation) videos, among every score
    value and "reject all": one sweep down the sorted scores, each accepted video moving its
    prediction from "unknown" to its top class (O(N log N), not one F1 per candidate)."""
    K = probs.shape[1]
    top = probs.argmax(dim=-1).tolist()
    truth = [K if label == UNKNOWN else label for label in labels.tolist()]  # K: "unknown"
    tp, fp, fn = [0] * (K + 1), [0] * (K + 1), [0] * (K + 1)
    for label in truth:  # everything rejected: every video predicted "unknown"
        if label == K:
            tp[K] += 1
        else:
            fp[K] += 1
            fn[label] += 1

    def f1(c: int) -> float | None:  # None: the class occurs nowhere, as scikit-learn skips it
        total = 2 * tp[c] + fp[c] + fn[c]
        return 2 * tp[c] / total if total else None

    per_class = [f1(c) for c in range(K + 1)]
    total, present = sum(v for v in per_class if v is not None), sum(v is not None
                                                                     for v in per_class)
    values = score.tolist()
    best_f1, best = total / present, float(torch.nextafter(score.max(), torch.tensor(math.inf)))
    order = sorted(range(len(values)), key=lambda i: -values[i])
    for n, i in enumerate(order):
        label, c = truth[i], top[i]
        if label == K:  # a rejected unknown video becomes a wrong known prediction
            tp[K], fn[K] = tp[K] - 1, fn[K] + 1
        else:
            fp[K] -= 1
        if label == c:
            tp[c], fn[c] = tp[c] + 1, fn[c] - 1
        else:
            fp[c] += 1
        for changed in {K, c}:
            old, new = per_class[changed], f1(changed)
            total += (new or 0.0) - (old or 0.0)
            present += (new is not None) - (old is not None)
            per_class[changed] = new
        last_of_ties = n + 1 == len(order) or values[order[n + 1]] != values[i]
        if last_of_ties and total / present > best_f1:
            best_f1, best = total / present, values[i]
    return best


def check_known_and_unknown(labels: Tensor, num_known: int, split: str) -> None:
    """An open-set split needs videos of known classes and of unknown ones."""
    unknown = labels >= num_known
    if not unknown.any() or unknown.all():
        raise ConfigError(f"open set: the {split} split needs videos of known and of unknown "
                          "classes (data.known_classes leaves the others unknown)")


def open_set_metrics(val: Scores, test: Scores, classes: list[str],
                     scores: Sequence[str] = tuple(SCORES)) -> dict[str, Any]:
    """Every score's AUROC and open macro-F1 on ``test`` with its threshold from ``val``, the
    closed-set accuracy on the known test videos, and the score with the best validation AUROC.
    ``classes``: the known classes, which the scores' columns are; labels from ``len(classes)``
    up are unknown classes."""
    K = len(classes)
    check_known_and_unknown(val.labels, K, "val")
    check_known_and_unknown(test.labels, K, "test")
    val_labels, test_labels = open_labels(val.labels, K), open_labels(test.labels, K)
    known = test_labels != UNKNOWN
    closed = (test.probs[known].argmax(dim=-1) == test_labels[known]).double().mean()
    result: dict[str, Any] = {
        "known_classes": list(classes),
        "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
        "closed_set_top1": float(closed * 100),
        "scores": {},
    }
    val_known = val_labels != UNKNOWN
    for name in scores:
        fn = SCORES[name]
        val_score, test_score = fn(val.probs, val.logits), fn(test.probs, test.logits)
        threshold = best_threshold(val.probs, val_score, val_labels)
        predicted = open_predictions(test.probs, test_score, threshold)
        result["scores"][name] = {
            "auroc": auroc(test_score[known], test_score[~known]),
            "open_macro_f1": open_macro_f1(predicted, test_labels, K),
            "threshold": threshold,
            "val_auroc": auroc(val_score[val_known], val_score[~val_known]),
            "known": test_score[known].tolist(),  # for the histograms
            "unknown": test_score[~known].tolist(),
        }
    # The score to trust is chosen on validation too.
    result["best_score"] = max(scores, key=lambda n: result["scores"][n]["val_auroc"])
    return result


def naming_metrics(test: Scores, everything: Scores, metrics: dict[str, Any]) -> dict[str, Any]:
    """Zero-shot naming by a text head: ``everything`` holds the test videos' scores over all
    class names (known then unknown). Among the unknown videos the best score rejects, the share
    named right among the unknown names; and top-1 of every test video among all names."""
    K = len(metrics["known_classes"])
    best = metrics["scores"][metrics["best_score"]]
    score = SCORES[metrics["best_score"]](test.probs, test.logits)
    rejected = (score < best["threshold"]) & (test.labels >= K)
    named = everything.probs[:, K:].argmax(dim=-1) + K  # [N], among the unknown names
    right = named[rejected] == test.labels[rejected]
    overall = everything.probs.argmax(dim=-1) == everything.labels
    return {
        "naming_top1": float(right.double().mean() * 100) if rejected.any() else None,
        "named_of_rejected": int(rejected.sum()),
        "all_classes_top1": float(overall.double().mean() * 100),
    }


def plot_histograms(metrics: dict[str, Any], path: Path) -> Path | None:
    """One panel per score: the known and unknown test videos' scores and the threshold chosen
    on validation (None without matplotlib)."""
    plt = pyplot("the score histograms")
    if plt is None:
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
    """The headline numbers: closed-set top-1, each score's AUROC and open macro-F1, and a
    text head's naming of the unknowns."""
    return {
        "closed_set_top1": round(metrics["closed_set_top1"], 2),
        "best_score": metrics["best_score"],
        **{name: {"auroc": round(s["auroc"], 4), "open_macro_f1": round(s["open_macro_f1"], 2)}
           for name, s in metrics["scores"].items()},
        **({"naming": metrics["naming"]} if "naming" in metrics else {}),
    }


def write_open_set(metrics: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """``<name>.json`` and, with matplotlib, ``<name>_scores.png``; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(metrics, indent=1))
    plot = plot_histograms(metrics, out_dir / f"{name}_scores.png")
    return [path] if plot is None else [path, plot]

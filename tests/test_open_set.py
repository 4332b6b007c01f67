"""Open-set recognition: known classes, known-ness scores, AUROC, open macro-F1, eval."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_training import synthetic_recipe

from vidadapt.cli import main as cli
from vidadapt.config import config_from_dict
from vidadapt.data.annotations import Annotation, VideoRecord
from vidadapt.data.synthetic import CLASSES, make_synthetic
from vidadapt.engine.evaluate import Scores
from vidadapt.engine.open_set import (
    UNKNOWN,
    auroc,
    best_threshold,
    evidential_uncertainty,
    known_subset,
    naming_metrics,
    open_macro_f1,
    open_predictions,
    open_set_metrics,
)
from vidadapt.errors import ConfigError
from vidadapt.models import create_model


def test_auroc_is_the_chance_a_known_video_outscores_an_unknown_one():
    known, unknown = torch.randn(40), torch.randn(30) - 0.5
    pairs = (known[:, None] > unknown[None]).double() + 0.5 * (known[:, None] == unknown[None])
    assert auroc(known, unknown) == pytest.approx(pairs.mean().item())
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])) == 0.5  # ties count half


def test_open_macro_f1_counts_unknown_as_one_more_class():
    labels = torch.tensor([0, 0, 1, UNKNOWN, UNKNOWN])
    predicted = torch.tensor([0, 1, 1, UNKNOWN, 0])
    # class 0: tp 1, fp 1, fn 1 -> 1/2; class 1: tp 1, fp 1 -> 2/3; unknown: tp 1, fn 1 -> 2/3
    assert open_macro_f1(predicted, labels, 2) == pytest.approx(100 * (1 / 2 + 2 / 3 + 2 / 3) / 3)
    # A known class that is neither a label nor a prediction is left out, as scikit-learn does.
    assert open_macro_f1(predicted, labels, 3) == open_macro_f1(predicted, labels, 2)
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    assert open_predictions(probs, probs.amax(1), 0.7).tolist() == [0, UNKNOWN, 1]


@pytest.mark.parametrize("seed", range(5))
def test_the_threshold_sweep_finds_the_best_validation_f1(seed):
    """The one-pass sweep against trying every candidate (each score value, with ties, and
    rejecting everything)."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(80, 4, generator=generator).softmax(1)
    labels = torch.randint(-1, 4, (80,), generator=generator)
    score = (torch.rand(80, generator=generator) * 10).round() / 10  # many ties
    candidates = [*score.unique().tolist(), score.max().item() + 1]
    f1 = {t: open_macro_f1(open_predictions(probs, score, t), labels, 4) for t in candidates}
    chosen = best_threshold(probs, score, labels)
    assert open_macro_f1(open_predictions(probs, score, chosen), labels, 4) == \
        pytest.approx(max(f1.values()))


def test_rejecting_everything_can_be_best():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    labels = torch.tensor([UNKNOWN, UNKNOWN])
    threshold = best_threshold(probs, probs.amax(1), labels)
    assert threshold > 0.9 and open_predictions(probs, probs.amax(1), threshold).eq(UNKNOWN).all()


def test_evidential_uncertainty_is_classes_over_dirichlet_strength():
    logits = torch.tensor([[0.0, 0.0], [20.0, 0.0]])
    # no evidence beyond exp(0) = 1 per class: S = 4, u = 2/4; clamped at 10: S = e^10 + 3
    expected = torch.tensor([0.5, 2 / (torch.tensor(10.0).exp().item() + 3)])
    torch.testing.assert_close(evidential_uncertainty(logits), expected)


def test_known_subset_relabels_and_marks_the_unknowns():
    records = [VideoRecord(f"{i}.mp4", i % 4) for i in range(8)]
    annotation = Annotation(records, ["a", "b", "c", "d"], "list.txt")
    known = known_subset(annotation, ["c", "a"], keep_unknown=False)
    assert known.classes == ["c", "a"] and [r.label for r in known.records] == [1, 0, 1, 0]
    everything = known_subset(annotation, ["c", "a"], keep_unknown=True)
    assert everything.classes == ["c", "a", "b", "d"]  # the unknown classes after the known
    assert [r.label for r in everything.records] == [1, 2, 0, 3] * 2
    with pytest.raises(ConfigError, match=r"'cc' \(did you mean 'c'\?\) is not a class of "
                                          "list.txt"):
        known_subset(annotation, ["cc"], keep_unknown=False)


def test_known_classes_config_rules():
    with pytest.raises(ConfigError, match="must list distinct class names"):
        config_from_dict({"data": {"known_classes": ["a", "a"]}})
    with pytest.raises(ConfigError, match="choose classes two ways; set one"):
        config_from_dict({"data": {"known_classes": ["a"], "class_subset": "base"}})


def test_metrics_need_known_and_unknown_videos_in_both_splits():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    known_only = Scores(probs, torch.tensor([0, 1]), torch.arange(2), probs.log())
    mixed = Scores(probs, torch.tensor([0, 2]), torch.arange(2), probs.log())  # 2: unknown
    with pytest.raises(ConfigError, match="the val split needs videos of known and of "
                                          "unknown classes"):
        open_set_metrics(known_only, mixed, ["a", "b"])
    metrics = open_set_metrics(mixed, mixed, ["a", "b"])
    assert metrics["closed_set_top1"] == 100.0 and metrics["num_unknown"] == 1
    assert set(metrics["scores"]) == {"max_softmax", "max_logit", "energy", "evidential"}
    assert metrics["scores"]["max_softmax"]["auroc"] == 1.0


@pytest.mark.parametrize("model", [
    "{method: linear, backbone: vit_tiny, num_frames: 2}",
    "{method: coop, backbone: vit_tiny_clip, num_frames: 2}\nmethod: {text: random, n_ctx: 2}",
])
def test_eval_open_set_on_the_synthetic_set(tmp_path, capsys, model):
    """Train on 9 of the 13 classes, then `eval --open-set`: thresholds from val, reported on a
    separate test split, with the histograms; a text head also names the unknowns."""
    make_synthetic(tmp_path / "videos", 26, 26, frames=4, size=16, workers=1, progress=False,
                   num_test=26)
    known = [CLASSES[i] for i in range(13) if i % 3 != 2]
    config = synthetic_recipe(tmp_path, f"model: {model}", frames=4, counts=(26, 26, 26),
                              batch_size=9, data_extra=f"  known_classes: {json.dumps(known)}\n",
                              train_extra=", feature_cache: off", name="open_set.yaml")
    assert cli(["train", str(config)]) == 0
    best = str(tmp_path / "run" / "best.safetensors")
    assert cli(["eval", "--checkpoint", best, "--open-set"]) == 2
    assert "--open-set chooses its thresholds on the val split" in capsys.readouterr().err
    assert cli(["eval", "--checkpoint", best, "--open-set", "--split", "test",
                "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scores = {"max_softmax", "max_logit", "energy"} | ({"evidential"} if "linear" in model
                                                        else set())  # text heads: no evidence
    assert set(summary) - {"naming"} == {"closed_set_top1", "best_score", *scores}
    metrics = json.loads((tmp_path / "eval" / "open_set_test.json").read_text())
    assert metrics["known_classes"] == known
    assert (metrics["num_known"], metrics["num_unknown"]) == (18, 8)  # 2 videos per class
    assert (tmp_path / "eval" / "open_set_test_scores.png").is_file()
    if "coop" in model:  # all 13 names: the 9 known, then the 4 unknown ones
        assert set(metrics["naming"]) == {"naming_top1", "named_of_rejected", "all_classes_top1"}
        assert "naming" in summary
    else:  # a linear head cannot name classes it never learned
        assert "naming" not in metrics
    # Without a test split the thresholds would be reported on the data that chose them.
    no_test = config.read_text().replace("num_test: 26, ", "")
    config.write_text(no_test)
    assert cli(["eval", str(config), "--checkpoint", best, "--open-set", "--split", "test"]) == 2
    assert "data.test is data.val" in capsys.readouterr().err


def test_evidential_loss_is_dears_log_loss_plus_calibration():
    """The log loss sum_k y_k (log S - log alpha_k) and the AvU term, its weight a0^(1 - t)."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 2])  # the first clip right, the second wrong
    alpha = logits.exp() + 1
    strength = alpha.sum(1)
    log_loss = strength.log() - alpha[torch.arange(2), labels].log()
    p = (alpha / strength[:, None]).amax(1)
    u = 3 / strength
    for progress in (0.0, 0.5, 1.0):
        weight = 0.01 ** (1 - progress)
        avu = torch.stack([weight * -p[0] * torch.log(1 - u[0] + 1e-10),
                           (1 - weight) * -(1 - p[1]) * torch.log(u[1] + 1e-10)])
        loss = create_model("evidential", "vit_tiny", num_classes=3).loss_fn
        torch.testing.assert_close(loss(logits, labels, progress), (log_loss + avu).mean())
    plain = create_model("evidential", "vit_tiny", num_classes=3, calibration=False).loss_fn
    torch.testing.assert_close(plain(logits, labels, 0.3), log_loss.mean())
    # Soft targets (mixup) weigh the classes' log terms.
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    expected = (soft * (strength.log()[:, None] - alpha.log())).sum(1).mean()
    torch.testing.assert_close(plain(logits, soft, 0.3), expected)


def test_evidential_takes_a_linear_head():
    with pytest.raises(ConfigError, match="evidential reads the linear head's outputs"):
        create_model("evidential+coop", "vit_tiny_clip", classes=["a", "b"],
                     coop={"text": "random"})


def test_known_classes_from_a_file(tmp_path):
    from vidadapt.engine.build import known_class_names

    names = tmp_path / "known.txt"
    names.write_text("moving left\nstatic ring\n")
    cfg = config_from_dict({"data": {"known_classes": str(names)}})
    assert known_class_names(cfg.data) == ["moving left", "static ring"]
    missing = config_from_dict({"data": {"known_classes": str(tmp_path / "no.txt")}})
    with pytest.raises(ConfigError, match="no.txt does not exist"):
        known_class_names(missing.data)


def test_a_text_head_names_the_unknowns_it_rejects():
    """Scores over all names: rejected unknown videos are named among the unknown names."""
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.55, 0.45]])
    test = Scores(probs, torch.tensor([0, 2, 3, 3]), torch.arange(4), probs.log())
    everything_probs = torch.tensor([[0.7, 0.1, 0.1, 0.1],  # known, right
                                     [0.1, 0.1, 0.7, 0.1],  # unknown 2, named right
                                     [0.1, 0.1, 0.6, 0.2],  # unknown 3, named 2: wrong
                                     [0.5, 0.1, 0.1, 0.3]])  # unknown 3, among unknowns: 3
    everything = Scores(everything_probs, test.labels, test.indices, everything_probs.log())
    metrics = {"known_classes": ["a", "b"], "best_score": "max_softmax",
               "scores": {"max_softmax": {"threshold": 0.8}}}
    naming = naming_metrics(test, everything, metrics)
    assert naming["named_of_rejected"] == 3
    assert naming["naming_top1"] == pytest.approx(200 / 3)
    assert naming["all_classes_top1"] == 50.0  # rows 0 and 1


def test_training_and_its_validation_see_the_known_classes_only(tmp_path):
    from vidadapt.engine.build import build_dataset, resolve_data

    make_synthetic(tmp_path / "v", 26, 26, frames=4, size=16, workers=1, progress=False)
    known = ["static ring", "moving left"]
    cfg = config_from_dict({"data": {
        "dataset": "synthetic", "root": str(tmp_path / "v"), "known_classes": known,
        "synthetic": {"num_train": 26, "num_val": 26, "frames": 4, "size": 16},
        "transform": {"size": 16, "short_side": 16}, "num_workers": 0}})
    cfg.data = resolve_data(cfg.data)
    train = build_dataset(cfg, "train", train=True)
    assert train.classes == known and sorted(r.label for r in train.records) == [0, 0, 1, 1]
    everything = build_dataset(cfg, "val", train=False, classes=known, unknowns=True)
    assert everything.classes[:2] == known and len(everything.records) == 26
    base_to_new = cfg
    base_to_new.data.class_subset = "base"  # as `vidadapt base-to-new` swaps it in
    with pytest.raises(ConfigError, match="choose classes two ways"):
        build_dataset(base_to_new, "train", train=True)


def test_which_heads_name_new_classes_and_give_evidence():
    linear = create_model("st_adapter", "vit_tiny", num_classes=3)
    assert not linear.head.names_new_classes and linear.head.logits_are_evidence
    coop = create_model("coop", "vit_tiny_clip", classes=["a", "b"], text="random")
    assert coop.head.names_new_classes and not coop.head.logits_are_evidence
    tip = create_model("tip_adapter", "vit_tiny_clip", classes=["a", "b"], text="random")
    assert not tip.head.names_new_classes  # its cache holds labels of its own classes

"""Self-supervised losses on features (`vidadapt pretrain`, ssl.objective masked / distill)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_training import CLASSES, TINY, TemplateClips, synthetic_pretrain_recipe, tiny_config

from vidadapt import ViT
from vidadapt.cli import main as cli
from vidadapt.config import SSLConfig, config_from_dict
from vidadapt.engine.checkpoint import read_adapter
from vidadapt.engine.pretext import is_pretext
from vidadapt.engine.ssl_objectives import MaskedFeaturePrediction, SelfDistillation
from vidadapt.engine.trainer import Trainer
from vidadapt.errors import ConfigError
from vidadapt.models import create_model


def tiny(method: str = "st_adapter", frames: int = 4, **options):
    torch.manual_seed(0)
    vit = ViT(TINY)
    model = create_model(method, vit, num_classes=CLASSES, num_frames=frames, **options)
    plain = ViT(TINY)
    plain.load_state_dict(vit.state_dict(), strict=False)  # the image model's own weights
    return model, plain


def test_masks_are_tubes_of_the_asked_share_and_blank_only_those_patches():
    model, plain = tiny()
    objective = MaskedFeaturePrediction(model, plain, mask_ratio=0.75)
    mask = objective.draw_mask(6, 16, torch.device("cpu"), torch.Generator().manual_seed(1))
    assert mask.sum(dim=1).tolist() == [12] * 6 and len({tuple(m.tolist()) for m in mask}) > 1
    video = torch.randn(6, 4, 3, 32, 32) + 5  # nothing is 0 before blanking
    blanked = objective.blank(video, mask)
    patches = blanked.unflatten(3, (4, 8)).unflatten(5, (4, 8))  # [B, T, C, h, p, w, p]
    zero = (patches == 0).all(dim=4).all(dim=5).all(dim=2)  # [B, T, h, w]
    for t in range(4):  # the same positions in every frame: tubes
        assert torch.equal(zero[:, t].flatten(1), mask)
    assert torch.equal(blanked[video.ne(blanked)], torch.zeros(6 * 4 * 3 * 12 * 64))


def test_masked_loss_is_the_error_on_the_hidden_patches_against_the_image_model():
    model, plain = tiny()
    objective = MaskedFeaturePrediction(model, plain, mask_ratio=0.5)
    video = torch.randn(2, 4, 3, 32, 32)
    loss = objective(video, seed=7)
    mask = objective.draw_mask(2, 16, torch.device("cpu"), torch.Generator().manual_seed(7))
    # The targets are the plain image model's: the adapters' modules are not in it.
    with torch.no_grad():
        tokens = plain.norm(plain.forward_tokens(video)[0][:, 1:])  # [B*T, P, D]
    target = F.layer_norm(tokens, tokens.shape[-1:])
    student = model.backbone.norm(model.encode(objective.blank(video, mask))[0][:, 1:])
    error = (objective.predictor(student) - target).pow(2).mean(-1)
    expected = error[mask.repeat_interleave(4, dim=0)].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    adapters = [p for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all(p.grad is not None for p in adapters)  # zero-init up layers:
    assert sum(p.grad.abs().sum() for p in adapters) > 0  # only they move at the first step
    assert objective.predictor.weight.grad is not None
    assert all(p.grad is None for p in plain.parameters())
    assert not model.head.weight.requires_grad  # nothing to classify
    assert set(objective.own_state()) == {"predictor.weight", "predictor.bias"}


def test_masked_refuses_methods_it_cannot_train():
    with pytest.raises(ConfigError, match="does not tokenise the clip frame by frame"):
        MaskedFeaturePrediction(*tiny("sparse_tubes"), mask_ratio=0.5)
    with pytest.raises(ConfigError, match="trains nothing inside it"):
        MaskedFeaturePrediction(*tiny("side_network"), mask_ratio=0.5)


def numbered(batch: int, frames: int) -> torch.Tensor:
    """Clips whose frame t is filled with t: a view's frames are readable."""
    values = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1, 1)
    return values.expand(batch, frames, 3, 32, 32).clone()


def test_distill_views_all_of_the_clip_and_a_cropped_half_of_it():
    model, _ = tiny(frames=4)
    objective = SelfDistillation(model, SSLConfig(objective="distill", local_scale=0.5))
    global_view, local = objective.views(numbered(64, 8), torch.Generator().manual_seed(0))
    assert global_view[:, :, 0, 0, 0].tolist() == [[0, 2, 4, 6]] * 64
    starts = set()
    for clip in local:  # T consecutive frames, each still one flat value after the crop
        first = round(clip[0, 0, 0, 0].item())
        starts.add(first)
        expected = torch.arange(first, first + 4, dtype=torch.float32).view(4, 1, 1, 1)
        torch.testing.assert_close(clip, expected.expand_as(clip), atol=1e-5, rtol=0)
    assert starts == {0, 1, 2, 3, 4}
    # A crop of the whole frame is the frame; a smaller one magnifies.
    ramp = torch.linspace(0, 1, 32).expand(2, 8, 3, 32, 32)
    whole = SelfDistillation(model, SSLConfig(objective="distill", local_scale=1.0))
    _, same = whole.views(ramp, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, ramp[:, :4], atol=1e-5, rtol=0)
    _, zoomed = objective.views(ramp.clone(), torch.Generator().manual_seed(3))
    steps = zoomed[..., 1:] - zoomed[..., :-1]
    assert steps.mean() < ramp[..., 1:].sub(ramp[..., :-1]).mean()


def test_distill_teacher_is_a_moving_average_without_gradients():
    model, _ = tiny(frames=4)
    objective = SelfDistillation(model, SSLConfig(objective="distill", ema=0.9, prototypes=16))
    names = objective.student_names
    assert names and not any(n.startswith(("model.head.", "teacher")) for n in names)
    assert any(n.startswith("head.") for n in names)  # the projection head is a student part
    loss = objective(torch.randn(3, 8, 3, 32, 32))
    loss.backward()
    assert all(t.grad is None and not t.requires_grad for t in objective.teacher)
    objective.after_step(0.0)
    assert objective.center.abs().sum() > 0  # moved by the training step
    students = dict(objective.named_parameters())
    before = [t.clone() for t in objective.teacher]
    with torch.no_grad():
        for name in names:
            students[name].add_(1.0)
    objective.after_step(0.0)  # momentum 0.9 at the start
    for name, old, new in zip(names, before, objective.teacher, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * students[name].detach())
    settled = [t.clone() for t in objective.teacher]
    objective.after_step(1.0)  # momentum 1 at the end: the teacher stays
    assert all(torch.equal(a, b) for a, b in zip(settled, objective.teacher, strict=True))
    # The teacher's outputs are the student's with the teacher's weights, not the student's.
    view = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        for name, teacher in zip(names, objective.teacher, strict=True):
            students[name].copy_(teacher)
        objective.model.eval()
        as_teacher = objective.head(objective.model.video_features(view))
        for name in names:
            students[name].add_(0.5)
        as_student = objective.head(objective.model.video_features(view))
    torch.testing.assert_close(objective.teacher_outputs(view), as_teacher)
    assert not torch.allclose(as_teacher, as_student, atol=1e-3)


def test_distill_centre_moves_once_per_step_by_all_its_micro_batches():
    model, _ = tiny(frames=4)
    objective = SelfDistillation(model, SSLConfig(objective="distill", prototypes=16))
    clips = torch.randn(6, 8, 3, 32, 32)
    objective(clips[:3])
    objective(clips[3:])  # two micro-batches of one step: the centre waits for the step
    assert objective.center.abs().sum() == 0
    means = [objective.teacher_outputs(part[:, 0::2]).mean(0)  # the global views
             for part in (clips[:3], clips[3:])]
    objective.after_step(0.5)
    centre = 0.1 * (means[0] + means[1]) / 2
    torch.testing.assert_close(objective.center[0], centre)
    objective.eval()
    objective(clips[:3])
    objective.after_step(0.6)  # a validation forward leaves the centre alone
    torch.testing.assert_close(objective.center[0], centre)


@pytest.mark.parametrize("objective", ["masked", "distill"])
def test_a_stopped_pretraining_resumes_to_the_same_weights(tmp_path, objective):
    frames = 2 if objective == "distill" else 4  # distill reads clips twice as long

    def run(work_dir, resume=False, stop_at=None):
        cfg = tiny_config(str(work_dir), model={"num_frames": frames},
                          train={"save_every_steps": 3}, ssl={"objective": objective})
        torch.manual_seed(0)
        model = create_model("st_adapter", ViT(TINY), num_classes=CLASSES, num_frames=frames,
                             positions=["pre_attn"], width=16)
        plain = ViT(TINY)
        plain.load_state_dict(model.backbone.state_dict(), strict=False)
        loss = (MaskedFeaturePrediction(model, plain, 0.75) if objective == "masked"
                else SelfDistillation(model, cfg.ssl))
        trainer = Trainer(cfg, model, TemplateClips(32, seed=0), TemplateClips(10, seed=1),
                          objective=loss)

        def stop(step):
            if step == stop_at:
                raise RuntimeError("killed")
        if stop_at:
            with pytest.raises(RuntimeError, match="killed"):
                trainer.fit(resume, on_step=stop)
            return None, None
        return trainer, trainer.fit(resume)

    reference, summary = run(tmp_path / "ref")
    assert summary["steps"] == 8 and summary["best_loss"] > 0
    run(tmp_path / "run", stop_at=6)  # saved at 3 and 4: steps 5 and 6 are redone
    resumed, again = run(tmp_path / "run", resume=True)
    assert again == summary
    for ours, theirs in ((resumed.model.trainable_state_dict(),
                          reference.model.trainable_state_dict()),
                         (resumed.objective.own_state(), reference.objective.own_state())):
        assert ours.keys() == theirs.keys()
        for name, value in ours.items():
            assert torch.equal(value, theirs[name]), name


def test_settings_a_loss_on_features_refuses():
    with pytest.raises(ConfigError, match="ssl.mask_ratio is 1.0: out of range"):
        config_from_dict({"ssl": {"objective": "masked", "mask_ratio": 1.0}})
    cfg = config_from_dict({"ssl": {"objective": "distill"}, "optim": {"mixup_alpha": 0.8}})
    from vidadapt.engine.experiment import check_pretrainable
    with pytest.raises(ConfigError, match="has no labels to mix"):
        check_pretrainable(cfg)


@pytest.mark.parametrize("objective", ["masked", "distill"])
def test_pretrain_on_features_then_train_from_its_parts(tmp_path, capsys, objective):
    config = synthetic_pretrain_recipe(tmp_path, objective)
    assert cli(["pretrain", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["best_loss"] == summary["val"]["loss"] > 0
    pretrained = read_adapter(tmp_path / "pre" / "best.safetensors")
    assert is_pretext(pretrained.classes) and pretrained.state  # marked, adapters inside
    assert not any(k.startswith("head.") for k in pretrained.state)  # it classified nothing
    assert cli(["eval", str(config), "--checkpoint", str(tmp_path / "pre" / "best.safetensors")
                ]) == 2
    assert "is self-supervised (vidadapt pretrain" in capsys.readouterr().err
    assert cli(["train", str(config), "--resume-from", str(tmp_path / "pre" / "best.safetensors"),
                "--set", "optim.lr_mult={'^backbone[.]': 0.0}",
                "--set", f"train.work_dir={tmp_path / 'run'}"]) == 0
    trained = read_adapter(tmp_path / "run" / "last.safetensors")
    assert trained.state["head.weight"].shape[0] == 13
    for key, value in pretrained.state.items():  # lr x 0: the adapters as pretrained
        torch.testing.assert_close(trained.state[key], value)

"""`vidadapt info`: exact parameter counts and FLOPs per view from the command line."""

import json

import pytest
import torch

from vidadapt.cli import main
from vidadapt.methods.sparse_tubes import TUBES_8_FRAMES
from vidadapt.models import create_model
from vidadapt.report import count_flops

CLIP_METHODS = ["zero_shot", "coop", "cocoop", "clip_adapter", "tip_adapter",
                "efficient_prompt", "actionclip", "xclip"]
# A small CLIP: the tiny image ViT and 5 classes, named as info names them.
TINY = ["--backbone", "vit_tiny", "--num-classes", "5", "--frames", "4", "--image-size", "32"]
TINY_CLASSES = [f"class {i}" for i in range(5)]


def info(capsys, *args):
    assert main(["info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_aim_vit_b16_matches_the_paper(capsys):
    report = info(
        capsys, "--method", "aim", "--backbone", "vit_b16_clip", "--num-classes", "400",
        "--frames", "8",
    )
    assert report["tunable_params"] == 10_966_672  # paper: 11M
    assert report["total_params"] == 96_764_560  # paper: 97M
    assert report["tunable_by_part"] == {"head": 307_600, "aim": 10_659_072}
    # AIM reports 606 GFLOPs for 3 views, counting a multiply-add once (fvcore).
    assert 3 * report["gmacs_per_view"] == pytest.approx(606, abs=1)
    assert report["gflops_per_view"] == pytest.approx(2 * report["gmacs_per_view"])


def test_options_from_set_and_other_backbones(capsys):
    ssv2 = info(capsys, "--method", "aim", "--num-classes", "174", "--set", "method.num_tadapter=2")
    assert ssv2["tunable_params"] == 14_343_342
    assert ssv2["options"]["aim"]["num_tadapter"] == 2
    large = info(capsys, "--method", "aim", "--backbone", "vit_l14_clip")
    assert (large["tunable_params"], large["total_params"]) == (38_261_136, 341_438_864)
    st = info(capsys, "--method", "st_adapter")
    assert st["tunable_by_part"]["st_adapter"] == 12 * 592_512


def test_image_size_changes_flops(capsys):
    small = info(capsys, "--method", "linear", "--image-size", "112", "--frames", "1")
    # ViT-B/16 at 112²: 49 patches + CLS; about 4.4 GMACs for one frame.
    assert 4.0 < small["gmacs_per_view"] < 4.8


def test_bad_option_is_one_line(capsys):
    assert main(["info", "--method", "aim", "--set", "method.num_tadaptr=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did you mean 'num_tadapter'" in err and "\n" not in err


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_clip_method_counts_match_the_model_built_on_cpu(capsys, method):
    report = info(capsys, "--method", method, *TINY)
    # No CLIP file has this image tower: the model a user runs has the random text tower.
    model = create_model(method, "vit_tiny", classes=TINY_CLASSES, num_frames=4, text="random")
    params = list(model.parameters())
    assert report["total_params"] == sum(p.numel() for p in params)
    assert report["text_params"] == sum(p.numel() for p in model.head.text.parameters())
    tunable = sum(p.numel() for p in params if p.requires_grad)
    assert report["tunable_params"] == tunable
    assert report["tunable_by_part"] == {method: tunable}


def test_tuned_towers_and_the_tip_adapter_cache(capsys):
    frozen = info(capsys, "--method", "xclip", *TINY)
    tuned = info(capsys, "--method", "xclip", *TINY, "--set", "method.tune_image_encoder=true")
    model = create_model("xclip", "vit_tiny", classes=TINY_CLASSES, num_frames=4, text="random")
    image_tower = sum(p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    assert tuned["tunable_params"] == frozen["tunable_params"] + image_tower
    # Tip-Adapter-F trains the cache keys: one E-dimensional key per training video.
    tip = info(capsys, "--method", "tip_adapter", *TINY, "--shots", "3",
               "--set", "method.finetune=true")
    assert tip["tunable_params"] == 3 * 5 * model.head.embed_dim


def test_text_flops_are_per_class_set_except_cocoops(capsys):
    coop, cocoop, actionclip = (
        info(capsys, "--method", m, *TINY) for m in ("coop", "cocoop", "actionclip")
    )
    # On the meta device, as info counts: torch's CPU attention kernel has no FLOP formula.
    with torch.device("meta"):
        model = create_model("coop", "vit_tiny", classes=TINY_CLASSES, num_frames=4, text="random")
        _, prompt = count_flops(model.head.text, torch.zeros(1, 77, dtype=torch.long))  # one prompt
    assert round(coop["text_gflops_per_class_set"] * 1e9) == 5 * prompt
    assert round(actionclip["text_gflops_per_class_set"] * 1e9) == 16 * 5 * prompt  # templates
    # CoCoOp's class embeddings depend on the clip: the text tower runs for every view.
    assert cocoop["text_gflops_per_class_set"] == 0
    extra = (cocoop["gflops_per_view"] - coop["gflops_per_view"]) * 1e9
    assert extra == pytest.approx(5 * prompt, rel=0.01)  # + the small meta-network


def test_clip_vit_b16_counts_match_clip_and_hf_xclip(capsys):
    zero_shot = info(capsys, "--method", "zero_shot")
    # CLIP's text tower (docs/methods.md): token embedding [49408, 512], positions [77, 512], 12
    # blocks of width 512 (MLP 2048), ln_final, text_projection [512, 512].
    block = (512 * 3 * 512 + 3 * 512) + (512 * 512 + 512) + (512 * 2048 + 2048) \
        + (2048 * 512 + 512) + 2 * 2 * 512
    text = 49408 * 512 + 77 * 512 + 12 * block + 2 * 512 + 512 * 512
    assert zero_shot["text_params"] == text == 63_428_096
    # OpenAI CLIP ViT-B/16: 149,620,737 parameters (both towers and the logit scale).
    assert zero_shot["total_params"] == 149_620_737
    assert zero_shot["tunable_params"] == 0
    # One view is the image tower's 8 frames (as the linear probe's); the 400 class
    # embeddings are computed once: 400 prompts of 77 tokens.
    assert zero_shot["gflops_per_view"] == pytest.approx(281.0, abs=0.1)
    assert zero_shot["text_gflops_per_class_set"] == pytest.approx(2383.8, abs=0.1)
    # Hugging Face XCLIPModel(XCLIPConfig(vision_config={"patch_size": 16, "num_frames": 8}))
    # holds 194,929,153 parameters: the same modules, both towers included.
    xclip = info(capsys, "--method", "xclip")
    assert xclip["total_params"] == 194_929_153
    assert xclip["tunable_params"] == 194_929_153 - 149_620_737  # both towers frozen


def test_motion_prompts_and_sparse_tubes(capsys):
    """Both count from the command line: motion prompts over clips with their motion channels,
    sparse tubes as one sequence per clip (a third of the plain ViT's cost at 4x the frames)."""
    motion = info(capsys, "--method", "motion_prompt", "--set", "method.motion=flow")
    assert motion["tunable_by_part"] == {"head": 307_600, "motion_prompt": 152_192 - 64 * 256}
    tubes = info(capsys, "--method", "sparse_tubes", "--frames", "32")
    plain = info(capsys, "--method", "linear", "--frames", "8")
    assert tubes["tunable_by_part"] == {"head": 307_600, "sparse_tubes": 129_024}
    assert tubes["gflops_per_view"] < 0.4 * plain["gflops_per_view"]
    assert round(tubes["gflops_per_view"], 1) == 103.5
    # The README's rows beside it: TubeViT's shapes fitted to 8 frames, AIM S+T at 32 frames.
    eight = info(capsys, "--method", "sparse_tubes", "--set", "method.tubes=" + json.dumps(
        TUBES_8_FRAMES))
    assert (eight["tunable_params"], round(eight["gflops_per_view"], 1)) == (430_480, 73.2)
    aim = info(capsys, "--method", "aim", "--frames", "32", "--set", "method.joint=false")
    assert round(aim["gflops_per_view"], 1) == 1577.7

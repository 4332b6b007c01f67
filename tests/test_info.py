"""`vidadapt info`: exact parameter counts and FLOPs per view from the command line."""

import json

import pytest

from vidadapt.cli import main


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

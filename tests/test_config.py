"""Typed YAML configs: every recipe loads and builds, inheritance, overrides, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import torch

from vidadapt.config import (
    ExperimentConfig,
    add_override_argument,
    config_from_dict,
    load_config,
    parse_override,
)
from vidadapt.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from vidadapt.engine.build import build_model
from vidadapt.errors import ConfigError
from vidadapt.methods.aim import AIMConfig
from vidadapt.methods.registry import parse_methods
from vidadapt.methods.st_adapter import STAdapterConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if "_base_" not in p.parts)

# Tunable parameters of the recipes whose counts the papers state (AIM: 36 adapters x
# 295,872 + head 307,600 + temporal embedding 6,144 + ln_post 1,536 for ViT-B/16 8 frames).
EXPECTED_TUNABLE = {
    "aim/k400_vit_b16_8x16.yaml": 36 * 295_872 + 307_600 + 6_144 + 1_536,
    "st_adapter/k400_vit_b16_8x16.yaml": 12 * 592_512 + 307_600,
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_recipe_loads_and_builds_on_the_meta_device(recipe):
    cfg = load_config(recipe, ["model.pretrained=null"])
    synthetic = cfg.data.dataset == "synthetic"  # its head size comes from the generated set
    classes = None
    if any(m.classifies_with_text for m in parse_methods(cfg.model.method)):
        # The text tower comes from the CLIP file, which is not read here: a random one. Class
        # names come from the annotation, absent but for the synthetic set: stand-in names.
        cfg = load_config(recipe, ["model.pretrained=null", "method.text=random"])
        if not synthetic:
            classes = [f"class {i}" for i in range(cfg.model.num_classes)]
    # The synthetic set's head has a class per known class (all 13 without an open set).
    synthetic_classes = len(cfg.data.known_classes or SYNTHETIC_CLASSES)
    with torch.device("meta"):
        model = build_model(cfg, synthetic_classes if synthetic else None, classes)
    expected_classes = synthetic_classes if synthetic else cfg.model.num_classes
    assert model.spec.num_classes == expected_classes
    assert model.spec.num_frames == cfg.model.num_frames
    assert model.spec.image_size == cfg.data.transform.size == (32 if synthetic else 224)
    expected = EXPECTED_TUNABLE.get(str(recipe.relative_to(CONFIGS)))
    if expected is not None:
        assert model.parameter_counts()["tunable"] == expected


def test_recipes_carry_the_reference_numbers():
    ssv2 = load_config(CONFIGS / "aim/ssv2_vit_b16_8.yaml")
    # Loading types the options: the method's config dataclass, the recipe's values in it.
    assert ssv2.method == {"aim": AIMConfig(num_tadapter=2, adapter_scale=1.0, drop_path=0.2)}
    assert (ssv2.optim.label_smoothing, ssv2.optim.epochs) == (0.1, 50)
    assert ssv2.data.transform.rand_augment == (4, 7)
    assert (ssv2.data.transform.random_erasing, ssv2.data.transform.flip) == (0.25, False)
    assert (ssv2.data.sampler.type, ssv2.data.test_clips, ssv2.data.transform.test_crops) == (
        "uniform", 1, 3)
    large = load_config(CONFIGS / "aim/k400_vit_l14_32x4.yaml")
    assert large.optim.lr_mult == {r"^backbone\.": 0.1}
    assert large.data.transform.color_jitter is not None
    assert (large.model.num_frames, large.data.sampler.interval) == (32, 4)
    assert large.data.test_clips == 3
    st = load_config(CONFIGS / "st_adapter/ssv2_vit_b16_8_24x384.yaml")
    assert st.method["st_adapter"].positions == ("pre_attn", "pre_mlp")
    assert (st.optim.lr, st.optim.weight_decay, st.optim.warmup_epochs) == (2.5e-4, 0.01, 2.0)
    diving = load_config(CONFIGS / "aim/diving48_vit_b16_32.yaml")
    assert (diving.model.num_frames, diving.model.num_classes, diving.data.sampler.type) == (
        32, 48, "uniform")


def test_bases_merge_key_by_key_and_later_files_win(tmp_path):
    write(tmp_path / "a.yaml", "optim: {lr: 0.1, epochs: 3}\ndata: {batch_size: 4}\n")
    write(tmp_path / "b.yaml", "optim: {epochs: 5}\n")
    child = write(tmp_path / "child.yaml", "_base_: [a.yaml, b.yaml]\noptim: {lr: 1e-3}\n")
    cfg = load_config(child, ["data.num_workers=2", "optim.betas=[0.8, 0.9]"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.data.batch_size) == (1e-3, 5, 4)
    assert (cfg.data.num_workers, cfg.optim.betas) == (2, (0.8, 0.9))
    assert cfg.train.work_dir == str(Path("runs") / "child")


def test_errors_name_the_file_that_set_the_key(tmp_path):
    write(tmp_path / "base.yaml", "optim: {lr: fast}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ndata: {batch_size: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(err.value) == f"{tmp_path / 'base.yaml'}: optim.lr: expected float, got 'fast'"
    with pytest.raises(ConfigError, match=r"^--set: data.batch_size: 0 is not allowed; use an "
                                          r"integer >= 1$"):
        load_config(child, ["optim.lr=0.1", "data.batch_size=0"])


@pytest.mark.parametrize("data, message", [
    ({"optim": {"lrr": 1}}, "x.yaml: optim.lrr: unknown key; did you mean 'lr'?"),
    ({"trian": {}}, "x.yaml: trian: unknown key; did you mean 'train'?"),
    ({"train": {"amp": "fp32"}}, "x.yaml: train.amp: 'fp32' is not one of 'bf16', 'fp16', 'off'"),
    ({"optim": {"betas": [0.9]}}, "x.yaml: optim.betas: expected a list of 2 values, got [0.9]"),
    ({"data": {"batch_size": 2.5}}, "x.yaml: data.batch_size: expected int, got 2.5"),
    ({"train": {"compile": True}}, "x.yaml: train.compile: True is not one of 'off', 'graphs', "
                                   "'inductor'"),
    ({"model": {"dropout": 1.0}}, "x.yaml: model.dropout: 1.0 is not allowed; use a "
                                  "probability in [0, 1)"),
    ({"data": {"roots": {"tain": "x"}}}, "x.yaml: data.roots.tain: 'tain' is not one of "
                                         "'train', 'val', 'test'"),
    ({"model": {"backbone": "vit_b16_clp"}}, "x.yaml: model.backbone: unknown preset "
                                             "'vit_b16_clp'; did you mean 'vit_b16_clip'?"),
    ({"model": {"image_size": 336}}, "x.yaml: model.image_size: 336 differs from the crop size "
                                     "data.transform.size 224; set only data.transform.size"),
])
def test_one_line_errors(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, default_origin="x.yaml")
    assert str(err.value) == message


def test_method_options_are_checked_by_the_method():
    with pytest.raises(ConfigError, match=r"^x.yaml: method: method 'aim' has no option "
                                          r"'num_tadaptr'; did you mean 'num_tadapter'\?"):
        config_from_dict({"method": {"num_tadaptr": 2}}, default_origin="x.yaml")
    with pytest.raises(ConfigError, match="num_tadapter must be 1 or 2, got 3"):
        config_from_dict({"method": {"num_tadapter": 3}})
    with pytest.raises(ConfigError, match=r"model.method: unknown method 'aimm'; did you mean"):
        config_from_dict({"model": {"method": "aimm"}})
    with pytest.raises(ConfigError, match=r"take options per method name .* unexpected \['rank'\]"):
        config_from_dict({"model": {"method": "aim+st_adapter"}, "method": {"rank": 4}})
    stacked = config_from_dict({"model": {"method": "aim+st_adapter"},
                                "method": {"st_adapter": {"width": 64}}})
    assert stacked.method == {"aim": AIMConfig(), "st_adapter": STAdapterConfig(width=64)}
    # Written back as a recipe writes it (every option spelled out), it loads the same.
    assert config_from_dict(stacked.to_dict()).method == stacked.method
    lone = config_from_dict({"method": {"num_tadapter": 2}})
    assert lone.to_dict()["method"] == dataclasses.asdict(AIMConfig(num_tadapter=2))
    assert config_from_dict(lone.to_dict()).method == lone.method


def test_override_values_are_yaml():
    assert parse_override("optim.lr=1e-3") == ("optim.lr", "1e-3")  # a float once typed
    assert parse_override("optim.betas=[0.9, 0.98]") == ("optim.betas", [0.9, 0.98])
    assert parse_override("model.pretrained=null") == ("model.pretrained", None)
    assert parse_override("train.work_dir=runs/a=b") == ("train.work_dir", "runs/a=b")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("optim.lr")
    cfg = config_from_dict({}, ["optim.lr=1e-3", "train.amp=off", "data.transform.flip=false"])
    assert (cfg.optim.lr, cfg.train.amp, cfg.data.transform.flip) == (1e-3, "off", False)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "optim: {lr: [\n"))
    with pytest.raises(ConfigError, match="loops back"):
        load_config(write(tmp_path / "loop.yaml", "_base_: loop.yaml\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path / "list.yaml", "- 1\n"))


def test_round_trip_through_plain_data_and_yaml(tmp_path):
    cfg = load_config(CONFIGS / "aim/k400_vit_l14_8x16.yaml")
    assert config_from_dict(cfg.to_dict()) == cfg
    saved = write(tmp_path / "saved.yaml", cfg.to_yaml())
    assert load_config(saved) == cfg
    assert ExperimentConfig().model.image_size is None  # filled from data.transform.size


@pytest.mark.parametrize("override, message", [
    ("method.num_tadaptr=2", "--set: method: method 'aim' has no option 'num_tadaptr'"),
    ("model.method=aimm", "--set: model.method: unknown method 'aimm'"),
    ("data.transform.size=33", "--set: data.transform: short sides (32, 33) must be at least"),
])
def test_errors_caused_by_an_override_name_set_not_the_recipe(tmp_path, override, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {method: aim}\nmethod: {num_tadapter: 1}\n"
                      "data: {transform: {size: 32, short_side: 32}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(recipe, [override])
    assert str(err.value).startswith(message)


def test_cfg_options_is_an_alias_of_repeated_set(tmp_path):
    parser = argparse.ArgumentParser()
    add_override_argument(parser)
    args = parser.parse_args(["--set", "optim.lr=0.1", "--cfg-options", "optim.epochs=3",
                              "data.batch_size=16", "--set", "optim.lr=0.2"])
    assert args.overrides == ["optim.lr=0.1", "optim.epochs=3", "data.batch_size=16",
                              "optim.lr=0.2"]
    assert parser.parse_args([]).overrides == []  # the default list was not extended
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 1.0e-3}\n")
    cfg = load_config(recipe, args.overrides)
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.data.batch_size) == (0.2, 3, 16)

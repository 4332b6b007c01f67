"""The README's methods table: parameters at ViT-B/16 scale and top-1 on the synthetic set.

    python benchmarks/methods_table.py                        # every method, the recipes' budget
    python benchmarks/methods_table.py --only linear vpt_deep --epochs 1
    python benchmarks/methods_table.py --json runs/methods_table.json --write-readme
    python benchmarks/methods_table.py --only xclip actionclip --counts-only --json runs/clip.json
    python benchmarks/methods_table.py --from-json runs/methods_table.json runs/clip.json \
        --json runs/methods_table.json --write-readme

For every video-classification method with a recipe in ``configs/synthetic/`` (and the variants
the recipes' comments name), two measurements:

* parameters of the method on CLIP ViT-B/16, 8 frames at 224², 400 classes, with the method's
  default options (the papers' settings) plus the variant's, counted on the meta device by
  ``vidadapt info``'s ``model_report`` (no weights, seconds per method); for the CLIP methods
  the total counts both towers, CLIP's text tower included, and the GFLOPs are the image
  side's (class embeddings are computed once);
* top-1 on the synthetic set after training the synthetic recipe with ``train_experiment``
  (methods that train nothing, zero-shot, are scored as ``vidadapt eval`` does), one run after
  another, at the recipe's budget (``--epochs`` shortens it for a quick check; ``--counts-only``
  skips it, and the table shows "—"). The CLIP recipes use the synthetic CLIP
  (``configs/synthetic/_clip_.yaml``).

``--write-readme`` replaces the table between the README's ``methods-table`` markers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vidadapt.commands.demo import RUNS as DEMO_RUNS
from vidadapt.config import load_config, method_overrides
from vidadapt.engine.distributed import DistInfo
from vidadapt.engine.evaluation import evaluate_config
from vidadapt.engine.experiment import train_experiment
from vidadapt.engine.logs import setup_logging
from vidadapt.methods.sparse_tubes import TUBES_8_FRAMES
from vidadapt.report import model_report

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "synthetic"
README = ROOT / "README.md"
MARKERS = ("<!-- methods-table:start -->", "<!-- methods-table:end -->")

# The scale the parameter counts are given at (the papers' standard setting).
BACKBONE, FRAMES, IMAGE_SIZE, NUM_CLASSES = "vit_b16_clip", 8, 224, 400
SETTINGS = {"backbone": BACKBONE, "frames": FRAMES, "image_size": IMAGE_SIZE,
            "num_classes": NUM_CLASSES}

# name → (recipe in configs/synthetic, method.* overrides that make the variant, label).
# Methods that adapt each frame on its own come first, those that look across frames last.
ROWS: dict[str, tuple[str, list[str], str]] = {
    "linear": DEMO_RUNS["linear"],
    "full": DEMO_RUNS["full"],
    "bitfit": ("bitfit.yaml", [], "BitFit"),
    "vpt_shallow": ("vpt.yaml", ["method.deep=false"], "VPT-shallow"),
    "vpt_deep": ("vpt.yaml", ["method.deep=true"], "VPT-deep"),
    "lora": ("lora.yaml", [], "LoRA (q, v)"),
    "prefix": ("prefix.yaml", [], "prefix tuning"),
    "adapter": ("adapter.yaml", ["method.style=sequential"], "adapter, sequential"),
    "adapter_parallel": ("adapter.yaml", ["method.style=parallel"], "adapter, parallel"),
    "adapter_scaled": (
        "adapter.yaml",
        ["method.style=parallel", "method.positions=[mlp]", "method.scale=4"],
        "adapter, scaled parallel (MLP)",
    ),
    "mam": ("mam.yaml", [], "MAM adapter"),
    "aim_s": DEMO_RUNS["aim_s"],
    "aim_st": DEMO_RUNS["aim_st"],
    "aim_stj": DEMO_RUNS["aim_stj"],
    "st_adapter": DEMO_RUNS["st_adapter"],
    "evl": ("evl.yaml", [], "EVL"),
    "zeroi2v": ("zeroi2v.yaml", [], "ZeroI2V (folds away on export)"),
    "side_network": ("side_network.yaml", [], "side network, DiST's form, 23 epochs"),
    # 8 frames + two 2x2 grids of them at ViT-B/16: the images of the paper's 8 + 32/16
    "dualpath": ("dualpath.yaml", ["method.grid=2"], "DualPath"),
    # Motion as a second modality: per-frame prompts from the RGB difference or optical flow.
    "motion_prompt": ("motion_prompt.yaml", [], "motion prompts, RGB differences"),
    "motion_prompt_flow": ("motion_prompt.yaml", ["method.motion=flow"],
                           "motion prompts, optical flow"),
    "motion_prompt_vpt": ("motion_prompt_vpt.yaml", [], "motion prompts + VPT-deep"),
    "sparse_tubes": ("sparse_tubes.yaml", [], "sparse tubes (TubeViT)"),
    # CLIP methods: class embeddings from the text tower (the synthetic CLIP, _clip_.yaml).
    # Frames averaged, then compared with text:
    "zero_shot": ("zero_shot.yaml", [], "zero-shot CLIP"),
    "coop": ("coop.yaml", [], "CoOp"),
    "cocoop": ("cocoop.yaml", [], "CoCoOp"),
    "clip_adapter": ("clip_adapter.yaml", [], "CLIP-Adapter"),
    "tip_adapter": ("tip_adapter.yaml", ["method.finetune=true"], "Tip-Adapter-F, 16 shots"),
    # with time modelled after or inside the image tower:
    "efficient_prompt": ("efficient_prompt.yaml", [], "efficient prompting, Ju et al."),
    "actionclip": ("actionclip.yaml", [], "ActionCLIP"),
    "xclip": ("xclip.yaml", [], "X-CLIP"),
}


# Options for the ViT-B/16 counts only, where a method's defaults do not fit 8 frames.
AT_VIT_B16: dict[str, dict] = {"sparse_tubes": {"tubes": TUBES_8_FRAMES}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), metavar="NAME",
                        help=f"a subset of: {', '.join(ROWS)}")
    parser.add_argument("--epochs", type=int, help="train this many epochs, not the recipe's")
    parser.add_argument("--counts-only", action="store_true",
                        help="no training: ViT-B/16 counts only (a row's top-1 shows '—')")
    parser.add_argument("--work-dir", default="runs/methods_table", help="one folder per run")
    parser.add_argument("--json", metavar="FILE",
                        help="also write the rows as JSON: a training run keeps the rows the "
                             "file holds; with --from-json, the merged rows")
    parser.add_argument("--from-json", nargs="+", metavar="FILE",
                        help="no training: the table of --json files, their rows merged in order "
                             "(a later file's row replaces an earlier one's)")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the table between the README's methods-table markers")
    return parser.parse_args()


def vit_b16_counts(recipe: str, overrides: list[str]) -> dict:
    """Parameters and FLOPs of the row's method on ViT-B/16, with the method's default options
    plus the variant's overrides (the synthetic recipe's widths suit a 4-block tiny ViT only)."""
    method = load_config(CONFIGS / recipe).model.method
    options = {**AT_VIT_B16.get(method, {}), **method_overrides(overrides, [method])}
    report = model_report(method, BACKBONE, NUM_CLASSES, FRAMES, IMAGE_SIZE, options=options)
    return {"tunable_params": report["tunable_params"], "total_params": report["total_params"],
            "gflops_per_view": round(report["gflops_per_view"], 1)}


def train_synthetic(name: str, work_dir: Path, epochs: int | None, trains: bool) -> dict:
    """Train the row's synthetic recipe (or, when the method ``trains`` nothing, score it as
    ``vidadapt eval CONFIG`` does); its top-1 (%), tunable parameters and seconds."""
    recipe, overrides, _ = ROWS[name]
    extra = [f"optim.epochs={epochs}"] if epochs is not None else []
    cfg = load_config(CONFIGS / recipe, [*overrides, *extra])
    cfg.train.work_dir = str(work_dir / name)
    start = time.perf_counter()
    if not trains:
        top1 = evaluate_config(cfg, "val", DistInfo())["top1"]
        return {"top1": top1, "epochs": 0, "synthetic_tunable_params": 0,
                "seconds": round(time.perf_counter() - start, 1)}
    summary = train_experiment(cfg)
    return {"top1": summary["val"]["top1"], "epochs": cfg.optim.epochs,
            "synthetic_tunable_params": summary["params"]["tunable"],
            "seconds": round(time.perf_counter() - start, 1)}


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def markdown_table(rows: dict[str, dict]) -> str:
    lines = [
        "| method (recipe options) | tunable | total | tunable % | GFLOPs / view "
        "| synthetic top-1 % |",
        "|---|---|---|---|---|---|",
    ]
    for name in (n for n in ROWS if n in rows):  # the table's order, whatever the runs' order
        recipe, overrides, label = ROWS[name]
        r = rows[name]
        options = " ".join(o.removeprefix("method.") for o in overrides)
        where = f"`{recipe}`" + (f" `{options}`" if options else "")
        share = 100 * r["tunable_params"] / r["total_params"]
        top1 = f"{r['top1']:.1f}" if "top1" in r else "—"  # --counts-only
        lines.append(
            f"| {label} ({where}) | {millions(r['tunable_params'])} "
            f"| {millions(r['total_params'])} | {share:.2f} | {r['gflops_per_view']:.1f} "
            f"| {top1} |"
        )
    return "\n".join(lines)


def write_readme(table: str) -> None:
    """Replace what lies between the two markers in README.md with ``table``."""
    text = README.read_text()
    start, end = (text.find(m) for m in MARKERS)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: add the lines {MARKERS[0]} and {MARKERS[1]} around the table")
    text = text[: start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:]
    README.write_text(text)
    print(f"table written to {README}")


def save(path: Path, rows: dict[str, dict]) -> None:
    path.write_text(json.dumps({"vit_b16": SETTINGS, "rows": rows}, indent=2))


def main() -> None:
    args = parse_args()
    saved = Path(args.json) if args.json else None
    if args.from_json:
        rows = {}
        for path in args.from_json:
            rows.update(json.loads(Path(path).read_text())["rows"])
        if saved:
            save(saved, rows)
    else:
        setup_logging()
        # Rows already in the JSON file are kept: a run cut short continues with --only.
        rows = json.loads(saved.read_text())["rows"] if saved and saved.exists() else {}
        for name in args.only or ROWS:
            recipe, overrides, label = ROWS[name]
            print(f"\n== {label} ({recipe} {' '.join(overrides)})", flush=True)
            rows[name] = vit_b16_counts(recipe, overrides)
            if not args.counts_only:
                trains = rows[name]["tunable_params"] > 0
                rows[name].update(train_synthetic(name, Path(args.work_dir), args.epochs, trains))
            if saved:  # after every run, so that finished runs survive an interrupted one
                save(saved, rows)
    table = markdown_table(rows)
    print(table)
    if args.write_readme:
        write_readme(table)


if __name__ == "__main__":
    main()

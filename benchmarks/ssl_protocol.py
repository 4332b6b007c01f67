"""The self-supervised protocol on the built-in synthetic set (README "Self-supervised adaptation").

For each ``ssl.objective`` (``none``: no pre-training, the reference), on one seed:

1. ``vidadapt pretrain configs/synthetic/pretrain.yaml --set ssl.objective=OBJ`` (ST-Adapter's
   adapters learn from the training clips without their labels);
2. a linear probe on the adapters (``configs/synthetic/linear_on_pretrained.yaml``: they stay
   as pre-trained, the head learns; with ``none`` the adapters are at their initialisation,
   the identity, so it is the probe on the frozen image model);
3. K-shot fine-tunes (K = 1, 4, 16 training videos per class) of ST-Adapter from the adapters,
   everything else as ``configs/synthetic/st_adapter.yaml`` (batch min(32, 13 K), 16 epochs).

Each result is one JSON line appended to ``--out``: the arm, the pretext's own validation
(top-1 or loss) and the validation top-1 of the probe and of every fine-tune.

    python benchmarks/ssl_protocol.py --objectives none masked distill order --seed 0 \\
        --out benchmarks/results/ssl_synthetic.jsonl
    python benchmarks/ssl_protocol.py --objectives none order --pretrain-set optim.epochs=32 \\
        --method-set "method.positions=[pre_attn,pre_mlp]" --seed 0 --out FILE
    python benchmarks/ssl_protocol.py --table --out benchmarks/results/ssl_synthetic.jsonl

``--pretrain-set`` overrides the pre-training run only; ``--method-set`` every run of the arm
(the adapters' placement must match the checkpoint the probe and fine-tunes start from).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CLASSES = 13  # the synthetic set's
SHOTS = (1, 4, 16)


def vidadapt(*args: str) -> dict:
    """Run the CLI; its summary (the last stdout line, JSON)."""
    done = subprocess.run([sys.executable, "-m", "vidadapt", *args], capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"vidadapt {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_arm(objective: str, seed: int, work: Path, pretrain_sets: list[str],
            method_sets: list[str]) -> dict:
    # The method's options hold in every run of the arm: the parts must fit each checkpoint.
    seed_set = ("--set", f"train.seed={seed}",
                *(arg for item in method_sets for arg in ("--set", item)))
    arm: dict = {"objective": objective, "seed": seed}
    if method_sets:
        arm["method_set"] = method_sets
    if pretrain_sets:
        arm["pretrain_set"] = pretrain_sets
    init = "model.init_from=null"  # none: ST-Adapter as initialised (the identity)
    if objective != "none":
        pre = work / f"pretrain_{objective}"
        summary = vidadapt("pretrain", "configs/synthetic/pretrain.yaml", *seed_set,
                           "--set", f"ssl.objective={objective}",
                           *(arg for item in pretrain_sets for arg in ("--set", item)),
                           "--set", f"train.work_dir={pre}")
        arm["pretext_val"] = summary.get("best_loss", summary.get("best_top1"))
        init = f"model.init_from={pre / 'best.safetensors'}"
    probe = vidadapt("train", "configs/synthetic/linear_on_pretrained.yaml", *seed_set,
                     "--set", init, "--set", f"train.work_dir={work / 'probe'}")
    arm["linear_probe"] = probe["val"]["top1"]
    for shots in SHOTS:
        tuned = vidadapt("train", "configs/synthetic/st_adapter.yaml", *seed_set, "--set", init,
                         "--set", f"data.shots={shots}",
                         "--set", f"data.batch_size={min(32, CLASSES * shots)}",
                         "--set", f"train.work_dir={work / f'shots{shots}'}")
        arm[f"{shots}_shot"] = tuned["val"]["top1"]
    return arm


def table(path: Path) -> str:
    """A markdown table of ``path``'s arms: each measure's mean over the seeds, and the seeds'
    values."""
    arms: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        arm = json.loads(line)
        label = ", ".join([arm["objective"], *arm.get("method_set", []),
                           *arm.get("pretrain_set", [])])
        arms.setdefault(label, []).append(arm)
    measures = ["linear_probe", *(f"{k}_shot" for k in SHOTS)]
    rows = ["| pre-training | seeds | " + " | ".join(m.replace("_", " ") for m in measures)
            + " |", "|---|---|" + "---|" * len(measures)]
    for objective, runs in arms.items():  # "order" and "order, optim.epochs=32" apart
        cells = []
        for measure in measures:
            values = [run[measure] for run in runs]
            each = " / ".join(f"{v:.1f}" for v in values)
            cells.append(f"**{sum(values) / len(values):.1f}** ({each})")
        seeds = ", ".join(str(run["seed"]) for run in runs)
        rows.append(f"| {objective} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["none", "masked", "distill"],
                        help="none (no pre-training) and/or ssl.objective values")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the pre-training run only, e.g. optim.epochs=32")
    parser.add_argument("--method-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of every run of the arm (pre-training, probe, "
                        "fine-tunes), e.g. method.positions=[pre_attn,pre_mlp]")
    parser.add_argument("--work", type=Path, default=Path("runs/ssl_protocol"))
    parser.add_argument("--out", type=Path, required=True, help="JSONL file the arms are "
                        "appended to (with --table: the file to read)")
    parser.add_argument("--table", action="store_true",
                        help="print the markdown table of --out's arms and run nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    for objective in args.objectives:
        started = time.perf_counter()
        arm = run_arm(objective, args.seed, args.work / f"{objective}_seed{args.seed}",
                      args.pretrain_set, args.method_set)
        arm["minutes"] = round((time.perf_counter() - started) / 60, 1)
        print(json.dumps(arm), flush=True)
        with args.out.open("a") as out:
            out.write(json.dumps(arm) + "\n")


if __name__ == "__main__":
    main()

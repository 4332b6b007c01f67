"""``vidadapt pretrain``: self-supervised adaptation on unlabeled clips.

    vidadapt pretrain configs/synthetic/pretrain.yaml --set ssl.objective=distill
    vidadapt train configs/synthetic/st_adapter.yaml --resume-from runs/pretrain/best.safetensors

The method's parts learn from the training split's clips without their labels, by
``ssl.objective``: a pretext task answered by a head (order, arrow, speed; ``engine.pretext``)
or a loss on the features (masked feature prediction, two-view self-distillation;
``engine.ssl_objectives``). Its checkpoints start ``vidadapt train`` (``--resume-from`` /
``model.init_from``) with a new head.
"""

from __future__ import annotations

import argparse

from ..engine.experiment import pretrain_experiment
from .train import add_run_arguments, run_experiment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, "YAML recipe: the method to adapt and the clips (their labels "
                              "unused), with an ssl section")


def run(args: argparse.Namespace) -> int:
    return run_experiment(args, pretrain_experiment)

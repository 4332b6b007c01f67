"""The ``vidadapt`` command line. Each subcommand is one module in ``vidadapt.commands`` that
defines ``add_arguments(parser)`` and ``run(args) -> int``; list it in ``COMMANDS``.

Only the module of the command being run is imported (it brings torch and the model zoo):
``vidadapt --help`` and ``--version`` import neither and answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Interrupted, UserError

INTERRUPTED = 130  # the shell's exit status for a process stopped by Ctrl-C (SIGINT)

# command → (module in vidadapt.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("info", "Report total/tunable parameters (per part) and GFLOPs per view of a "
                     "method on a backbone."),
    "demo": ("demo", "Train linear probe, AIM S / S+T / S+T+J, ST-Adapter and full fine-tuning "
                     "on the built-in synthetic set and compare them."),
    "check-data": ("check_data", "Decode the first and last frames of every video of an "
                                 "annotation; list the bad ones."),
    "make-synthetic": ("make_synthetic", "Write the synthetic demo video set (mp4 + "
                                         "train.txt/val.txt/classes.txt) to a folder."),
    "train": ("train", "Train a model from a YAML recipe (GPUs: torchrun --nproc_per_node N -m "
                       "vidadapt train)."),
    "pretrain": ("pretrain", "Self-supervised adaptation: train a method's parts on unlabeled "
                             "clips (ssl.objective: order, arrow, speed, masked, distill)."),
    "eval": ("eval", "Evaluate an adapter checkpoint with multi-view testing (clips x crops); "
                     "metrics + plots."),
    "base-to-new": ("base_to_new", "Base-to-new generalisation of a CLIP method: base and new "
                                   "accuracy, harmonic mean."),
    "predict": ("predict", "Print the top classes (with probabilities) of video files using an "
                           "adapter checkpoint."),
    "export": ("export", "Write a standalone model (backbone + head + method weights; LoRA "
                         "and ZeroI2V's adapters folded in) for serving."),
    "import-checkpoint": ("import_checkpoint", "Read a paper's released checkpoint (AIM, "
                                               "ST-Adapter, EVL, ActionCLIP, X-CLIP) into a "
                                               "vidadapt adapter checkpoint."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the arguments of ``command`` (whose module it imports) only."""
    parser = argparse.ArgumentParser(
        prog="vidadapt",
        description="Parameter-efficient image-to-video transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"vidadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"vidadapt.commands.{module_name}")
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the first positional
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except Interrupted as err:
        print(f"vidadapt {args.command}: {err}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"vidadapt {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except UserError as err:
        print(f"vidadapt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``tumorseg train CONFIG``: train the network a training config describes and write its card.

Single process: ``tumorseg train Resources/Models/mip-pet-2d.train.json -o runs/mip-pet-2d``.
Distributed (DDP; NCCL on GPUs, gloo on CPUs; multi-node through torchrun's own options):
``torchrun --nproc_per_node=N -m TumorSegLib train CONFIG ...``.
The run folder gets the weights, the card, the config, ``checkpoint.pt``, ``best.pt``,
``log.csv``, ``curve.png`` and ``manifest.sha256``; ``--publish DIR`` copies the model (card,
weights, config) into a models folder such as ``Resources/Models`` when training ends.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model from a training config (<name>.train.json)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config, e.g. Resources/Models/mip-pet-2d.train.json")
    parser.add_argument("-o", "--output", help="run folder (default runs/<name>)")
    parser.add_argument("--data-root", help="folder the config's data paths are relative to (replaces data.root)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--resume", nargs="?", const="", metavar="CHECKPOINT",
                        help="continue from a checkpoint (default: <run folder>/checkpoint.pt)")
    parser.add_argument("--max-minutes", type=float, help="time budget: stop cleanly and still write the best model")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument("--fold", type=int, help="cross-validation fold to hold out (replaces data.fold; needs data.folds)")
    parser.add_argument("--threads", type=int, help="CPU threads per process (torch.set_num_threads)")
    parser.add_argument("--publish", metavar="DIR", help="copy the trained card, weights and config into DIR")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..progress import ProgressBar, json_lines
    from ..training.config import load_config
    from ..training.export import publish
    from ..training.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"epochs": args.epochs} if args.epochs else None
    config = load_config(args.config, args.data_root, overrides, args.fold)
    out_dir = Path(args.output or Path("runs") / config.name)
    resume = (args.resume or str(out_dir / "checkpoint.pt")) if args.resume is not None else None
    main_rank = os.environ.get("RANK", "0") == "0"
    if args.progress_json or not main_rank:
        card = train(config, out_dir, args.device, resume, args.max_minutes, json_lines() if main_rank else None,
                     command_line(args))
    else:
        with ProgressBar(f"training {config.name}") as bar:
            card = train(config, out_dir, args.device, resume, args.max_minutes, bar, command_line(args))
    if card is None:
        return 0
    if args.publish:
        for path in publish(card, Path(args.publish)):
            print(f"published {path}", file=sys.stderr)
    print(f"model card: {card}", file=sys.stderr)
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as it can be typed again (with the torchrun prefix when distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = (f"torchrun --nnodes={world // int(os.environ.get('LOCAL_WORLD_SIZE', world))} "
              f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)} -m TumorSegLib train"
              if world > 1 else "tumorseg train")
    words = [args.config]
    for option in ("output", "data_root", "device", "max_minutes", "epochs", "fold", "threads", "publish"):
        value = getattr(args, option)
        if value is not None:
            words += ["--" + option.replace("_", "-"), str(value)]
    if args.resume is not None:
        words += ["--resume"] + ([args.resume] if args.resume else [])
    return f"{prefix} {shlex.join(words)}"

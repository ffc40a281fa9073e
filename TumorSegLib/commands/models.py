"""``tumorseg models [--models-dir DIR] [--json]``: the model cards found and the state of their weights."""

from __future__ import annotations

import argparse
import json

from ..report import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models (cards) found, their modality and mode, and the state of their weights",
        description="List model cards from --models-dir, the TUMORSEG_MODELS folders and Resources/Models "
        "(first occurrence of a name wins). Weights: 'sha256 ok' (the file's SHA-256 equals the card's: it is the "
        "file the card describes, nothing more), 'no sha256' (the card gives none), missing, 'sha256 mismatch' "
        "(corrupt or different file), 'outside the card folder' (refused) or 'needed card missing or broken' (a card "
        "of its inference.average_with or organ_from cannot be used); the worst over an ensemble's files and those "
        "cards. Files that are not valid cards are listed as broken, with the reason; the other models stay usable.",
    )
    parser.add_argument("--models-dir", help="extra folder of model cards")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cards import model_dirs, scan_cards, weights_status

    cards, broken = scan_cards(args.models_dir)
    rows = [{"name": card.name, "modality": card.modality, "mode": card.mode, "weights": weights_status(card),
             "title": card.title, "card": str(card.path)} for card in cards]
    rows += [{"name": path.stem, "modality": "-", "mode": "-", "weights": "-", "title": f"BROKEN: {error}",
              "card": str(path)} for path, error in broken.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(format_table(rows, ("name", "modality", "mode", "weights", "title")))
    else:
        print("no models found in: " + ", ".join(str(d) for d in model_dirs(args.models_dir)))
    return 0

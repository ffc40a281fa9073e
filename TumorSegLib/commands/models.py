"""``tumorseg models [--models-dir DIR] [--json]``: the model cards found and the state of their weights."""

from __future__ import annotations

import json

from ..report import format_table


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models (cards) found, their modality and mode, and whether their weights are verified",
        description="List model cards from --models-dir, the TUMORSEG_MODELS folders and Resources/Models "
        "(first occurrence of a name wins). Weights: verified (SHA-256 matches the card), missing, "
        "unverified (card gives no SHA-256) or 'sha256 mismatch' (corrupt or different file).",
    )
    parser.add_argument("--models-dir", help="extra folder of model cards")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..cards import list_cards, model_dirs, weights_status

    rows = [{"name": card.name, "modality": card.modality, "mode": card.mode, "weights": weights_status(card),
             "title": card.title, "card": str(card.path), "weights_path": str(card.weights_path)}
            for card in list_cards(args.models_dir)]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(format_table(rows, ("name", "modality", "mode", "weights", "title")))
    else:
        print("no models found in: " + ", ".join(str(d) for d in model_dirs(args.models_dir)))
    return 0

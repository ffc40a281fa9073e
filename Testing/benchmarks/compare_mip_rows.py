"""The MIP ship-rule figures of a candidate against the shipped card, from two ``evaluate_mip_pet.py --rows`` files.

    python Testing/benchmarks/compare_mip_rows.py CANDIDATE_ROWS SHIPPED_ROWS [--variant card]

Prints, for the same validation images: the mean patient Dice of each and its paired change (bootstrap 95 %
interval, patients up and down), the clean controls of each and the paired change in their fraction, and the median
control false-positive pixels of each.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import paired_change  # noqa: E402


def rows_of(path: str, variant: str) -> dict:
    return {row["case"]: row for row in json.loads(Path(path).read_text())["rows"][variant]}


def compare(new: dict, old: dict) -> dict:
    if new.keys() != old.keys():
        raise SystemExit("the two files hold different images: they were not made on the same split")
    patients = sorted(c for c, r in old.items() if not r["control"])
    controls = sorted(c for c, r in old.items() if r["control"])

    def clean(rows, c):
        return float(rows[c]["fp_area_px"] == 0)

    def side(rows):
        return {"dice_mean": float(np.mean([rows[c]["dice"] for c in patients])),
                "clean": int(sum(clean(rows, c) for c in controls)),
                "control_fp_px_median": float(np.median([rows[c]["fp_area_px"] for c in controls])),
                "seconds_median": float(np.median([rows[c]["seconds"] for c in rows]))}

    return {"patients": len(patients), "controls": len(controls), "candidate": side(new), "shipped": side(old),
            "dice_change": paired_change([new[c]["dice"] for c in patients], [old[c]["dice"] for c in patients]),
            "clean_change": paired_change([clean(new, c) for c in controls], [clean(old, c) for c in controls])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate")
    parser.add_argument("shipped")
    parser.add_argument("--variant", default="card", help="row set of each file (default: card)")
    args = parser.parse_args(argv)
    print(json.dumps(compare(rows_of(args.candidate, args.variant), rows_of(args.shipped, args.variant)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

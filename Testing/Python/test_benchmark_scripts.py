"""The measurement scripts of Testing/benchmarks run and write what they promise (figures are not checked).

The benchmark's JSON schema is the one the inference issue asks for; the precision-agreement
script runs on one real validation nodule. Small inputs only: the full runs belong outside tests.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import shared_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts' helpers, imported by the unit tests below


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_inference_benchmark_writes_the_promised_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench_inference.py", "--cases", "mip-2d", "--model-2d", "random", "--json", out)
    data = json.loads(out.read_text())
    rows = data["cases"]
    assert [row["name"] for row in rows] == ["mip-2d", "mip-2d (ours-torch)"]
    assert data["cpu"]["isa"] in ("AMX", "AVX512-BF16", "AVX512", "AVX2") and data["cpu"]["cores"] >= 1
    for row in rows:
        assert {"name", "ours_s", "baseline_s", "speedup", "dice_vs_fp32", "peak_rss_mb", "backend"} <= set(row)
        assert row["macs_per_window"] > 1e6 and row["windows_computed"] == 1
        # a fraction, but not bounded by 1 on every CPU: a turbo clock above the one /proc/cpuinfo gives and
        # convolution algorithms that multiply less than a direct convolution (Winograd) both exceed the
        # direct-convolution peak (1.13 was measured under the AVX2 caps); 4 still catches a unit error
        assert 0.0 < row["fraction_of_peak"] < 4.0 and 0.0 < row["baseline_hardware"]["fraction_of_peak"] < 4.0
        assert row["ours_s"] > 0 and row["baseline_s"] > 0 and 0.0 <= row["dice_vs_fp32"] <= 1.0
        ours, base, half_ms = row["ours_s"], row["baseline_s"], 0.0005  # times are rounded to ms, the ratio to 0.01
        assert (base - half_ms) / (ours + half_ms) - 0.005 <= row["speedup"] <= (base + half_ms) / (ours - half_ms) + 0.005
        assert row["peak_rss_mb"] > 0
    assert "speedup" in result.stdout  # the printed table


def test_benchmark_compares_one_card_with_the_baseline(tmp_path):
    """The engine side runs the card alone, as the baseline does: no flips, no partner card, no resampling;
    every ensemble member's multiply-adds count, and no CPU peak is claimed for a GPU."""
    from bench_inference import bench_card, hardware_use
    from TumorSegLib.cards import card_from_dict, find_card

    shipped = find_card("ct-lung-lesion-3d")
    assert shipped.inference.average_with and shipped.inference.flip_axes  # what the benchmark has to take away
    card, _ = bench_card("ct-lung-lesion-3d", 3, tmp_path)
    assert not card.inference.average_with and not card.inference.flip_axes
    assert card.preprocessing.spacing is None and card.preprocessing.orientation is None
    data = card.to_dict()
    single = card_from_dict({**data, "weights": {k: v for k, v in data["weights"].items() if k != "ensemble"}}, card.path)
    array = np.zeros((48, 48, 16), np.float32)
    one, both = (hardware_use(c, array, 1, 1.0, "fp32", "cpu") for c in (single, card))
    assert len(card.weights.members) == 2 and both["macs_per_window"] == 2 * one["macs_per_window"] > 0
    assert hardware_use(single, array, 1, 1.0, "fp32", "cuda")["fraction_of_peak"] is None


def test_precision_agreement_reports_one_nodule(tmp_path):
    shared_data("lidc-nodule-vois")
    report, rows = tmp_path / "agreement.md", tmp_path / "rows.json"
    run_script("precision_agreement.py", "--models", "ct-lung-lesion-3d", "--limit", "1", "--report", report,
               "--rows", rows)
    data = json.loads(rows.read_text())
    (row,) = data["rows"]["ct-lung-lesion-3d"]
    assert 0.0 <= row["agreement"] <= 1.0 and row["fp32_voxels"] > 0
    assert "| ct-lung-lesion-3d |" in report.read_text()


def test_paired_change_of_a_ship_rule():
    import paired

    change = paired.paired_change([0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.6, 0.7])
    assert change["better"] == 2 and change["worse"] == 1
    assert abs(change["mean"] - 0.025) < 1e-12 and change["low"] <= change["mean"] <= change["high"]
    assert change["low"] < 0 < change["high"]  # one of four nodules went down by as much as two went up
    steady = paired.paired_change([0.9] * 5, [0.8] * 5)
    assert abs(steady["low"] - 0.1) < 1e-12 and abs(steady["high"] - 0.1) < 1e-12


def test_lung_report_pairs_rows_by_nodule(tmp_path):
    import evaluate_ct_lesions as lung

    def row(case, dice, recist_error=1.0):
        return {"case": case, "dice": dice, "recist_abs_error_mm": recist_error, "relative_volume_error": 0.1,
                "seconds": 0.1}

    before = {"3d": [row("a", 0.5), row("b", 0.9)], "2d": [row("a", 0.1)]}
    now = {"3d": [row("b", 0.9), row("a", 0.7, 0.5)]}  # another order, one model fewer
    changes = lung.changes_against(now, before)
    assert list(changes) == ["3d"]
    assert abs(changes["3d"]["mean"] - 0.1) < 1e-12 and (changes["3d"]["better"], changes["3d"]["worse"]) == (1, 0)
    assert changes["3d"]["dice_mean_before"] == 0.7 and changes["3d"]["recist_abs_error_mm_median_before"] == 1.0
    text = "".join(lung.change_lines(changes, {"3d": lung.summary(now["3d"])}, tmp_path / "rows.json"))
    assert "| 3d | 0.7000 | 0.8000 | +0.1000" in text
    try:
        lung.changes_against({"3d": [row("c", 0.8), row("a", 0.7)]}, before)
    except SystemExit as error:
        assert "other nodules" in str(error)
    else:
        raise AssertionError("rows of other nodules were paired")


def test_mip_comparison_pairs_images_and_counts_clean_controls():
    import compare_mip_rows as mip

    def row(case, dice, fp_px=0.0):
        return {"case": case, "control": case.startswith("control"), "dice": dice, "fp_area_px": fp_px, "seconds": 0.1}

    old = {r["case"]: r for r in (row("patient_1", 0.5), row("patient_2", 0.7), row("control_1", 1.0, 30.0),
                                  row("control_2", 1.0), row("control_3", 1.0, 5.0))}
    new = {r["case"]: r for r in (row("patient_1", 0.6), row("patient_2", 0.7), row("control_1", 1.0),
                                  row("control_2", 1.0), row("control_3", 0.0, 9.0))}
    result = mip.compare(new, old)
    assert (result["patients"], result["controls"]) == (2, 3)
    assert abs(result["dice_change"]["mean"] - 0.05) < 1e-12 and result["dice_change"]["better"] == 1
    assert (result["candidate"]["clean"], result["shipped"]["clean"]) == (2, 1)
    assert result["clean_change"]["better"] == 1 and result["clean_change"]["worse"] == 0
    assert (result["candidate"]["control_fp_px_median"], result["shipped"]["control_fp_px_median"]) == (0.0, 5.0)
    del new["control_3"]
    try:
        mip.compare(new, old)
    except SystemExit as error:
        assert "different images" in str(error)
    else:
        raise AssertionError("files of different images were paired")


def test_mip_report_runs_on_one_patient_and_one_control(tmp_path):
    shared_data("dmiai2023-mip-pet")
    rows = tmp_path / "rows.json"
    run_script("evaluate_mip_pet.py", "--limit", "1", "--threads", "1", "--out", tmp_path, "--rows", rows)
    data = json.loads(rows.read_text())
    assert [r["control"] for r in data["rows"]["card"]] == [False, True]
    report = (tmp_path / "mip-pet-2d-report.md").read_text()
    assert "NOT the full validation split" in report and "| card |" in report


def synthetic_mip_records(patients: int = 10, controls: int = 15) -> list:
    """Records as ``mip_lesion_filter.record`` makes them: each patient one true lesion and one false one, each
    control one false one; false lesions sit high in the body (``vertical`` 0.1, like brain uptake), true ones lower."""
    from TumorSegLib.lesion_filter import FEATURES

    rng = np.random.default_rng(1)
    vertical = FEATURES.index("vertical")

    def lesion(true: bool):
        row = np.zeros(len(FEATURES))  # only the height tells true from false
        row[vertical] = (0.5 if true else 0.1) + rng.normal(0.0, 0.02)
        return row

    records = []
    for i in range(patients + controls):
        control = i >= patients
        truths = [] if control else [True]
        kinds = truths + [False]
        records.append({"case": f"{'control' if control else 'patient'}_{i:03d}", "split": "validation",
                        "control": control, "truth_px": 0 if control else 100, "truth_lesions": len(truths),
                        "features": np.array([lesion(k) for k in kinds]),
                        "tp": np.array([90 if k else 0 for k in kinds]),
                        "fp": np.array([10 if k else 40 for k in kinds]),
                        "touched": [{1} if k else set() for k in kinds],
                        "area": np.array([100 if k else 40 for k in kinds])})
    return records


def test_filter_calibration_filters_each_image_by_a_filter_fitted_without_it(monkeypatch):
    import mip_filter_calibration as calibration

    records = synthetic_mip_records()
    fold = calibration.folds_of(records)
    assert list(fold) == list(calibration.folds_of(records))  # fixed seed
    for k in range(calibration.FOLDS):  # patients and controls each dealt round the folds
        assert sum(f == k and not r["control"] for r, f in zip(records, fold)) == 2
        assert sum(f == k and r["control"] for r, f in zip(records, fold)) == 3

    fitted_on = []
    real = calibration.fitted_filter
    monkeypatch.setattr(calibration, "fitted_filter",
                        lambda rs, regression=None: fitted_on.append({r["case"] for r in rs}) or real(rs, regression))
    outcomes, scores, specs = calibration.out_of_fold(records)
    assert len(specs) == len(fitted_on) == calibration.FOLDS
    for k, cases in enumerate(fitted_on):
        held_out = {r["case"] for r, f in zip(records, fold) if f == k}
        assert held_out and not held_out & cases and len(cases | held_out) == len(records)
    # the false lesions are learnt out of fold: every control clean, every patient keeps its tumour
    assert all(o["fp_px"] == 0 for o in outcomes if o["control"])
    assert all(o["found"] == 1 for o in outcomes if not o["control"])
    assert all(len(s) == len(r["tp"]) for s, r in zip(scores, records))
    # --thresholds-only: a given regression is kept, only the thresholds are chosen per fold
    regression = {**specs[0], "threshold": 0.5, "image_threshold": 0.0}
    outcomes, _, kept = calibration.out_of_fold(records, regression)
    assert all(s["coef"] == regression["coef"] and s["intercept"] == regression["intercept"] for s in kept)
    assert all(o["fp_px"] == 0 for o in outcomes if o["control"])


def test_filter_calibration_writes_the_filter_and_its_out_of_fold_figures_into_the_card(tmp_path):
    import mip_filter_calibration as calibration

    path = tmp_path / "mip-pet-2d.json"
    path.write_text(json.dumps({"postprocessing": {}, "provenance": {"lesion_filter": {"fitted_on": "elsewhere"}}}))
    spec = {"coef": [1.0], "threshold": 0.2, "image_threshold": 0.5}
    figures = {"dice_mean": 0.7, "found": 1, "lesions": 2, "control_fp_median": 0.0, "control_fp_mean": 1.0,
               "clean": 3, "controls": 4, "dice_ci": [0.6, 0.8]}
    calibration.write_card(path, spec, figures, 97, thresholds_only=True)
    card = json.loads(path.read_text())
    assert card["postprocessing"]["lesion_filter"] == spec
    written = card["provenance"]["lesion_filter"]
    assert written["fitted_on"].startswith("regression: elsewhere; thresholds: ") and "97 validation" in written["fitted_on"]
    assert "--thresholds-only CARD" in written["command"]
    assert written["validation_out_of_fold"] == {k: v for k, v in figures.items() if k != "dice_ci"}


def test_filter_network_is_fitted_out_of_fold_and_tells_true_lesions_from_false(monkeypatch):
    import mip_lesion_filter as fit
    from TumorSegLib.lesion_filter import spec_problems

    monkeypatch.setattr(fit, "NETWORK", {"channels": [4], "patch": 8, "pool": 1})  # small and quick
    monkeypatch.setattr(fit, "NETWORK_TRAINING", {**fit.NETWORK_TRAINING, "epochs": 150})
    records = synthetic_mip_records()
    rng = np.random.default_rng(2)
    for r in records:  # a true lesion is hot in its patch, a false one lukewarm; the height still tells them apart
        hot = (r["tp"] > 0).astype(np.float32)[:, None, None, None]
        r["patches"] = (0.3 + 0.6 * hot + rng.normal(0, 0.05, (len(hot), 5, 8, 8))).astype(np.float32)
    scores = fit.out_of_fold_scores(records, fit.fit_network)
    true = np.concatenate([s[r["tp"] > 0] for s, r in zip(scores, records)])
    false = np.concatenate([s[r["tp"] == 0] for s, r in zip(scores, records)])
    assert true.min() > false.max(), (true.min(), false.max())
    spec, network = fit.fit_network(records)
    assert spec_problems({**spec, "network": {**spec["network"], "file": "x.pt"}}, "whole-image-2d") == []
    assert not network.training  # scores of the returned network do not depend on the batch


def test_filter_ship_rule():
    import mip_lesion_filter

    shipped = {"dice_mean": 0.70, "control_fp_median": 0.0}
    good = {"dice_mean": 0.697, "clean_change_ci": [0.01, 0.2], "control_fp_median": 0.0}
    assert mip_lesion_filter.ships(good, shipped)[0]
    assert mip_lesion_filter.ships({**good, "dice_mean": 0.69}, shipped) == (False, "fails on Dice")
    assert mip_lesion_filter.ships({**good, "clean_change_ci": [0.0, 0.2]}, shipped) == (False,
                                                                                        "fails on clean controls")
    assert mip_lesion_filter.ships({**good, "control_fp_median": 3.0}, shipped) == (False, "fails on control median FP")


def test_filter_fit_out_of_fold_takes_each_training_image_from_the_network_that_never_saw_it(tmp_path):
    import pytest

    import mip_lesion_filter as fit

    root = shared_data("dmiai2023-mip-pet") / "dev"
    shipped = json.loads((BENCHMARKS.parents[1] / "Resources" / "Models" / "mip-pet-2d.json").read_text())
    weights = BENCHMARKS.parents[1] / "Resources" / "Models" / shipped["weights"]["file"]

    def fold_card(name: str, **data) -> Path:
        card = json.loads(json.dumps(shipped))
        card["provenance"]["config"]["data"].update(data)
        for step in ("lesion_filter", "image_gate"):  # fitted for the shipped weights: a trained fold has neither
            card["postprocessing"].pop(step, None)
        (tmp_path / name).mkdir()
        shutil.copy(weights, tmp_path / name / weights.name)  # a link would lead outside the card's folder
        (tmp_path / name / "mip-pet-2d.json").write_text(json.dumps(card))
        return tmp_path / name / "mip-pet-2d.json"

    from TumorSegLib.cards import load_card

    main = fit.split_of(load_card(fold_card("main")), root)
    folds = [fold_card(f"fold{k}", inner_folds=2, inner_fold=k) for k in range(2)]
    owner = fit.out_of_fold_networks(folds, root, main, tmp_path)
    assert set(owner) == {c.name for c, side in main if side == "train"}
    assert {folder.name for _, folder in owner.values()} == {"oof0", "oof1"}
    for number, path in enumerate(folds):  # each image from the fold that validated it, never from one trained on it
        trained = {c.name for c, side in fit.split_of(load_card(path), root) if side == "train"}
        assert not trained & {name for name, (_, folder) in owner.items() if folder.name == f"oof{number}"}
    with pytest.raises(SystemExit, match="validated by none"):
        fit.out_of_fold_networks(folds[:1], root, main, tmp_path)
    with pytest.raises(SystemExit, match="touches the validation split"):
        fit.out_of_fold_networks([fold_card("plain")], root, main, tmp_path)


def gate_records(monkeypatch):
    """``synthetic_mip_records`` with small gate inputs: a patient's probability shows a hot 2x2 spot mid-image, a
    control's is lukewarm everywhere."""
    import mip_image_gate as gate

    monkeypatch.setattr(gate, "GATE", {"channels": [4, 8], "height": 32, "width": 16, "pool": 2})
    rng = np.random.default_rng(3)
    records = synthetic_mip_records()
    for r in records:
        r["gate"] = (0.1 + rng.normal(0.0, 0.02, (2, 16, 8))).astype(np.float32)
        if not r["control"]:
            row, col = rng.integers(4, 10), rng.integers(1, 6)
            r["gate"][1, row:row + 2, col:col + 2] = 1.0
    return records


def test_image_gate_is_fitted_out_of_fold_and_tells_patients_from_controls(monkeypatch):
    import mip_image_gate as gate

    records = gate_records(monkeypatch)
    monkeypatch.setattr(gate, "GATE_TRAINING", {**gate.GATE_TRAINING, "epochs": 20, "shift_rows": 2})
    fitted_on = []
    scores = gate.out_of_fold_gate_scores(records, lambda rs: fitted_on.append({r["case"] for r in rs})
                                          or gate.fit_gate(rs))
    assert len(fitted_on) == gate.FOLDS
    for r in records:  # each image is left out of exactly one fold's fit, and scored by that fold's gate
        assert sum(r["case"] not in cases for cases in fitted_on) == 1
    patients = np.array([not r["control"] for r in records])
    assert gate.auc(scores, patients) > 0.95, scores
    assert not gate.fit_gate(records).training


def test_image_gate_setting_cleans_most_controls_within_the_dice_tolerance_and_empties_no_patient(monkeypatch):
    import mip_image_gate as gate

    records = gate_records(monkeypatch)
    keeps = [np.ones(len(r["tp"]), dtype=bool) for r in records]
    scores = np.array([0.3 if r["control"] else 0.6 for r in records])
    scores[-1] = 0.7  # one control the gate cannot clean below 0.71, with a lesion of 200 pixels
    records[-1]["area"], records[-1]["fp"] = np.array([200]), np.array([200])
    setting, curve = gate.choose_setting(records, keeps, scores)
    assert setting == (None, 0.31)  # 14 of 15 controls clean from 0.31 on; above 0.60 every patient is emptied
    chosen = next(c for c in curve if c[:2] == setting)
    assert chosen[3] == 14 / 15 and chosen[2] == curve[0][2] and chosen[4] == 0
    outcomes = gate.gated(records, keeps, scores, 0.31)
    assert [o["fp_px"] for o in outcomes if o["control"]] == [0] * 14 + [200]

    scores[0] = 0.05  # a patient the gate scores as healthy: only protecting its 100-pixel lesion saves it
    setting, _ = gate.choose_setting(records, keeps, scores)
    assert setting == (100, 0.31)  # the patients' lesions have 100 pixels, the other controls' 40
    assert gate.emptied(gate.gated(records, keeps, scores, 0.0), gate.gated(records, keeps, scores, 0.31)) == [
        records[0]["case"]]
    assert gate.emptied(gate.gated(records, keeps, scores, 0.0), gate.gated(records, keeps, scores, 0.31, 100)) == []


def test_liver_report_keeps_its_hand_written_candidates_and_reads_the_liver_segment(tmp_path):
    import evaluate_liver as liver
    from TumorSegLib.cards import find_card

    report = tmp_path / "liver-report.md"
    assert liver.kept_sections(report) == ""
    report.write_text("# generated\n\nfigures\n\n## Candidates (issue 18)\n\n| a | b |\n")
    assert liver.kept_sections(report) == "\n## Candidates (issue 18)\n\n| a | b |\n"
    report.write_text("# generated, nothing kept\n")
    assert liver.kept_sections(report) == ""
    assert find_card(liver.NAME).organ == "Liver" and find_card(f"{liver.NAME}-coarse").organ is None


def test_the_pngs_pixel_size_is_read_from_the_hot_region_at_the_top():
    import mip_pixel_size as pixel

    picture = np.full((400, 200), 255, np.uint8)
    picture[20:50, 60:130] = 10  # the brain: 30 rows, 70 columns
    picture[300:340, 80:100] = 5  # a hot region below the top quarter is not the brain
    assert pixel.brain_extent(picture) == (70, 30)
    picture[20:50] = 255
    assert pixel.brain_extent(picture) is None


def test_the_mip_scale_check_builds_a_coarser_volume_whose_mip_is_the_shrunk_png():
    import evaluate_mip_3d as mip3d
    from scipy import ndimage

    from TumorSegLib.mip import NETWORK_SPACING, coronal_mip

    native, resampled = (mip3d.cards(2.1, 420)[name] for name in mip3d.CARDS)
    assert native.preprocessing.mip.resample_width_mm is None and resampled.preprocessing.mip.pixel_mm == 2.1
    picture = np.full((120, 400), 255, np.float32)
    picture[30:60, 100:140] = 20  # a hot spot
    volume = mip3d.volume_of(picture, 0.5, 2.1, resampled)
    assert np.allclose(volume.spacing, [4.2, 4.2, 4.2])
    mip = coronal_mip(volume, resampled)
    assert np.array_equal(mip.array, np.rint(np.clip(ndimage.zoom(picture, 0.5, order=1), 0, 255)))
    assert mip.meta[NETWORK_SPACING] == [2.1, 2.1] and NETWORK_SPACING not in coronal_mip(volume, native).meta
    mask = np.zeros((60, 200), bool)
    mask[10:20, 5:10] = True
    back = mip3d.back_onto(mask, (120, 400))
    assert back.shape == (120, 400) and back.sum() == 4 * mask.sum() and back[20:40, 10:20].all()

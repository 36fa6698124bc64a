"""COCO bbox evaluation: the published oracle, hand-computed cases, results conversion and the CLI."""
import contextlib
import copy
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.evaluation import evaluate_coco, format_per_class, format_table, save_results, to_coco_results
from common.evaluation import coco_eval

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / "tests" / "fixtures" / "coco_eval_oracle"
GT_FILE = ORACLE / "instances_val2014_100.json"
RES_FILE = ORACLE / "instances_val2014_fakebbox100_results.json"
KEYS = ["bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl",
        "bbox_AR1", "bbox_AR10", "bbox_AR100", "bbox_ARs", "bbox_ARm", "bbox_ARl"]
BACKENDS = ["faster", "pycocotools"]


@pytest.fixture(scope="module")
def oracle():
    gt = json.loads(GT_FILE.read_text())
    results = json.loads(RES_FILE.read_text())
    expected = dict(zip(KEYS, json.loads((ORACLE / "expected.json").read_text())["stats"]))
    return gt, results, expected


def tiny_gt(boxes, n_images=1, n_cats=1):
    """A COCO ground truth: boxes is a list of (image_id, category_id, [x, y, w, h])."""
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, n_images + 1)],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(1, n_cats + 1)],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0} for k, (img, cat, box) in enumerate(boxes)],
    }


def det(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}


# --- the published oracle -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_oracle_reproduced(backend, oracle):
    gt, results, expected = oracle
    metrics = evaluate_coco(GT_FILE, RES_FILE, backend=backend)
    assert list(metrics) == KEYS
    for key in KEYS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key
    # parsed inputs give the very same numbers as paths, and are left untouched
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    assert evaluate_coco(gt, results, backend=backend) == metrics
    assert gt == gt_before and results == results_before


def test_backends_agree(oracle):
    gt, results, _ = oracle
    a = evaluate_coco(gt, results, backend="faster", per_class=True)
    b = evaluate_coco(gt, results, backend="pycocotools", per_class=True)
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    assert list(a["per_class"]) == list(b["per_class"])
    assert np.allclose(list(a["per_class"].values()), list(b["per_class"].values()), atol=1e-12, rtol=0)
    # per-class AP averages to AP over the classes that have ground truth
    defined = [v for v in a["per_class"].values() if v >= 0]
    assert np.mean(defined) == pytest.approx(a["bbox_AP"], abs=1e-12)


def test_format_table_is_the_coco_api_text(oracle):
    gt, results, _ = oracle
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_gt = COCO(str(GT_FILE))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(RES_FILE)), "bbox")
        ev.evaluate()
        ev.accumulate()
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            ev.summarize()
    table = format_table(evaluate_coco(gt, results, backend="pycocotools"))
    assert table == text.getvalue().rstrip("\n")
    assert table.splitlines()[0] == (" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505")


@pytest.mark.parametrize("backend", BACKENDS)
def test_silent_unless_verbose(backend, oracle, capsys):
    gt, results, _ = oracle
    evaluate_coco(gt, results, backend=backend)
    assert capsys.readouterr().out == ""
    evaluate_coco(gt, results, backend=backend, verbose=True)
    assert "DONE" in capsys.readouterr().out


def test_fallback_to_pycocotools(oracle, monkeypatch, caplog):
    gt, results, expected = oracle
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes `import faster_coco_eval` fail
    coco_eval._backend.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=coco_eval.__name__):
            metrics = evaluate_coco(gt, results, backend="faster")
        assert coco_eval._backend("faster")[2] == "pycocotools"
    finally:
        coco_eval._backend.cache_clear()
    assert any("pycocotools" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert metrics["bbox_AP"] == pytest.approx(expected["bbox_AP"], abs=1e-6)


# --- max_dets, empty results, image restriction -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_dets_keys_on_oracle(backend, oracle):
    gt, results, expected = oracle
    metrics = evaluate_coco(gt, results, backend=backend, max_dets=(1, 10, 300))
    assert "bbox_AR300" in metrics and "bbox_AR100" not in metrics
    assert metrics["bbox_AR300"] >= expected["bbox_AR100"] - 1e-9
    assert metrics["bbox_AP"] >= expected["bbox_AP"] - 1e-9
    line = format_table(metrics).splitlines()[8]
    assert line.startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=300 ]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_dets_used_for_ap_and_ar(backend):
    # 150 objects in one image, each found exactly: a cap of 100 finds 100 of them, a cap of 300 all.
    boxes = [[40.0 * (k % 15), 40.0 * (k // 15), 30.0, 30.0] for k in range(150)]
    gt = tiny_gt([(1, 1, b) for b in boxes])
    results = [det(1, 1, b, 1.0 - k / 1000) for k, b in enumerate(boxes)]
    m100 = evaluate_coco(gt, results, backend=backend)
    m300 = evaluate_coco(gt, results, backend=backend, max_dets=(1, 10, 300))
    assert m100["bbox_AR100"] == pytest.approx(100 / 150, abs=1e-12)
    assert m300["bbox_AR300"] == pytest.approx(1.0, abs=1e-12)
    assert m300["bbox_AR1"] == pytest.approx(1 / 150, abs=1e-12)
    # precision 1 up to recall 2/3 then nothing: 67 of the 101 recall thresholds (0, .01, ..., .66)
    assert m100["bbox_AP"] == pytest.approx(67 / 101, abs=1e-12)
    assert m300["bbox_AP"] == pytest.approx(1.0, abs=1e-12)
    assert m300["bbox_APs"] == pytest.approx(1.0, abs=1e-12)  # 30x30 boxes are small
    m2 = evaluate_coco(gt, results, backend=backend, max_dets=(50, 300))
    assert [k for k in m2 if k.startswith("bbox_AR")] == ["bbox_AR50", "bbox_AR300", "bbox_ARs", "bbox_ARm", "bbox_ARl"]
    assert m2["bbox_AR50"] == pytest.approx(50 / 150, abs=1e-12)
    assert len(format_table(m2).splitlines()) == 11


@pytest.mark.parametrize("max_dets", [(), (100, 10), (1, 10, 10), (0, 10), (1.5, 10)])
def test_max_dets_validated(max_dets, oracle):
    with pytest.raises(ValueError, match="max_dets"):
        evaluate_coco(oracle[0], oracle[1], max_dets=max_dets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_give_zeros(backend, oracle, tmp_path):
    gt, _, _ = oracle
    (tmp_path / "empty.json").write_text("[]")
    for results in ([], tmp_path / "empty.json"):
        metrics = evaluate_coco(gt, results, backend=backend)
        assert list(metrics) == KEYS
        assert all(metrics[k] == 0.0 for k in KEYS), metrics


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_ids_restriction(backend):
    # image 1 is found, image 2's object is missed by a box elsewhere that scores lower
    gt = tiny_gt([(1, 1, [10, 10, 50, 50]), (2, 1, [100, 100, 50, 50])], n_images=2)
    results = [det(1, 1, [10, 10, 50, 50], 0.9), det(2, 1, [400, 300, 50, 50], 0.8)]
    both = evaluate_coco(gt, results, backend=backend)
    # TP then FP over 2 objects: precision 1 up to recall 0.5, i.e. 51 of the 101 recall thresholds
    assert both["bbox_AP"] == pytest.approx(51 / 101, abs=1e-12)
    assert both["bbox_AR100"] == pytest.approx(0.5, abs=1e-12)
    assert evaluate_coco(gt, results, backend=backend, image_ids=[1])["bbox_AP"] == pytest.approx(1.0, abs=1e-12)
    assert evaluate_coco(gt, results, backend=backend, image_ids=[2])["bbox_AP"] == 0.0
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_coco(gt, results, backend=backend, image_ids=[3])
    with pytest.raises(ValueError, match="image_ids"):
        evaluate_coco(gt, results, backend=backend, image_ids=[])


def test_image_ids_match_a_cut_down_ground_truth(oracle):
    gt, results, _ = oracle
    keep = [img["id"] for img in gt["images"][:40]]
    cut_gt = dict(gt, images=gt["images"][:40], annotations=[a for a in gt["annotations"] if a["image_id"] in keep])
    cut_results = [r for r in results if r["image_id"] in keep]
    restricted = evaluate_coco(gt, results, image_ids=keep, per_class=True)
    assert restricted == evaluate_coco(cut_gt, cut_results, per_class=True)
    assert abs(restricted["bbox_AP"] - evaluate_coco(gt, results)["bbox_AP"]) > 1e-3


# --- per-class AP ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_perfect(backend):
    boxes = [(1, 1, [10, 10, 50, 50]), (1, 2, [200, 100, 60, 40]), (2, 1, [300, 200, 45, 45])]
    gt = tiny_gt(boxes, n_images=2, n_cats=3)
    results = [det(img, cat, box, 0.5) for img, cat, box in boxes]
    metrics = evaluate_coco(gt, results, backend=backend, per_class=True)
    # class3 has no object
    assert metrics["per_class"] == pytest.approx({"class1": 1.0, "class2": 1.0, "class3": -1.0}, abs=1e-12)
    # every object is medium-sized (32^2 < area < 96^2): small and large have nothing to measure
    for key in KEYS:
        expected = -1.0 if key in ("bbox_APs", "bbox_APl", "bbox_ARs", "bbox_ARl") else 1.0
        assert metrics[key] == pytest.approx(expected, abs=1e-12), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_one_perfect_one_missed(backend):
    gt = tiny_gt([(1, 1, [10, 10, 50, 50]), (1, 2, [200, 100, 60, 40])], n_cats=2)
    results = [det(1, 1, [10, 10, 50, 50], 0.9), det(1, 2, [500, 400, 60, 40], 0.9)]
    metrics = evaluate_coco(gt, results, backend=backend, per_class=True)
    assert metrics["per_class"] == pytest.approx({"class1": 1.0, "class2": 0.0}, abs=1e-12)
    assert metrics["bbox_AP"] == pytest.approx(0.5, abs=1e-12)
    # shifted by 10 px: overlap 40x50 of two 50x50 boxes, IoU 2000 / 3000 = 2/3
    shifted = [det(1, 1, [20, 10, 50, 50], 0.9)]
    iou_ap = evaluate_coco(gt, shifted, backend=backend, per_class=True)["per_class"]["class1"]
    assert iou_ap == pytest.approx(0.4, abs=1e-12)  # IoU 2/3 passes thresholds .50, .55, .60, .65: 4 of 10


def test_format_per_class_aligned():
    text = format_per_class({"person": 0.53312, "traffic light": 0.0, "fire hydrant": -1.0})
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["person", "0.533"]
    assert lines[3].endswith("0.000") and lines[4].endswith("n/a")


# --- input errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    ({"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id 123456789"),
    ({"image_id": 42, "category_id": 999, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id 999"),
    ({"image_id": 42, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "bbox"),
    ({"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1]}, "score"),
    ({"image_id": "42", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id"),
])
def test_bad_results_named(bad, match, oracle):
    gt, results, _ = oracle
    with pytest.raises(ValueError, match=match) as info:
        evaluate_coco(gt, results + [bad])
    assert f"record {len(results)}" in str(info.value)


def test_bad_ground_truth_named(oracle):
    gt, results, _ = oracle
    with pytest.raises(ValueError, match="'categories'"):
        evaluate_coco({k: v for k, v in gt.items() if k != "categories"}, results)
    no_area = dict(gt, annotations=[{k: v for k, v in a.items() if k != "area"} for a in gt["annotations"]])
    with pytest.raises(ValueError, match=r"annotations\[0\].*'area'"):
        evaluate_coco(no_area, results)
    with pytest.raises(ValueError, match="JSON list"):
        evaluate_coco(gt, {"annotations": results})
    with pytest.raises(ValueError, match="unknown evaluation backend"):
        evaluate_coco(gt, results, backend="detectron")


# --- results conversion and writing ---------------------------------------------------------------------------


def test_to_coco_results_converts_and_maps():
    table = np.array([1, 3, 90])  # label -> COCO category id
    boxes = [np.array([[10.0, 20.0, 110.5, 70.25], [0.123456, 1.0, 2.5, 3.0]], np.float32), np.zeros((0, 4))]
    scores = [np.array([0.9876543, 0.1], np.float32), np.zeros(0)]
    labels = [np.array([2, 0]), np.zeros(0, np.int64)]
    out = to_coco_results([7, np.int64(8)], boxes, scores, labels, table)
    assert out == [
        {"image_id": 7, "category_id": 90, "bbox": [10.0, 20.0, 100.5, 50.25], "score": 0.98765},
        {"image_id": 7, "category_id": 1, "bbox": [0.1235, 1.0, 2.3765, 2.0], "score": 0.1},
    ]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int and type(r["score"]) is float
               and all(type(v) is float for v in r["bbox"]) for r in out)
    json.dumps(out, allow_nan=False)
    # a callable mapping gives the same records
    assert to_coco_results([7, 8], boxes, scores, labels, lambda lab: table[lab]) == out
    with pytest.raises(ValueError, match="label 3"):
        to_coco_results([7], boxes[:1], scores[:1], [np.array([3, 0])], table)
    with pytest.raises(ValueError, match="one entry per image"):
        to_coco_results([7, 8], boxes[:1], scores, labels, table)
    with pytest.raises(ValueError, match=r"image 7: expected boxes \[n, 4\]"):
        to_coco_results([7], [np.zeros((2, 5))], scores[:1], labels[:1], table)
    with pytest.raises(ValueError, match="NaN"):
        to_coco_results([7], [np.full((2, 4), np.nan)], scores[:1], labels[:1], table)


def test_to_coco_results_round_trip_reproduces_oracle(oracle):
    gt, results, expected = oracle
    cat_ids = np.array(sorted(c["id"] for c in gt["categories"]))
    image_ids = sorted({r["image_id"] for r in results})
    per_image = [[r for r in results if r["image_id"] == i] for i in image_ids]
    xyxy = [np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)]) for rs in per_image]
    scores = [np.array([r["score"] for r in rs]) for rs in per_image]
    labels = [np.searchsorted(cat_ids, [r["category_id"] for r in rs]) for rs in per_image]
    converted = to_coco_results(image_ids, xyxy, scores, labels, cat_ids)
    assert len(converted) == len(results)
    metrics = evaluate_coco(gt, converted)
    assert all(metrics[k] == pytest.approx(expected[k], abs=1e-6) for k in KEYS)


def test_save_results_atomic(tmp_path):
    path = tmp_path / "sub" / "results.json"
    records = [{"image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
    save_results(records, path)
    assert json.loads(path.read_text()) == records
    with pytest.raises(TypeError):
        save_results([{"score": object()}], path)
    with pytest.raises(ValueError):
        save_results([{"score": float("nan")}], path)
    assert json.loads(path.read_text()) == records  # a failed write leaves the old file intact
    assert os.listdir(path.parent) == ["results.json"]  # and no temporary file behind


# --- the command line -----------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "common.evaluate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_end_to_end(tmp_path, oracle):
    out = tmp_path / "eval.json"
    proc = run_cli(GT_FILE, RES_FILE, "--out", out, "--per-class")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505"
    assert lines[12] == "" and lines[13].split() == ["category", "AP"] and "person" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["bbox_AP"] == pytest.approx(0.50458, abs=1e-5)
    assert all(metrics[k] == pytest.approx(oracle[2][k], abs=1e-6) for k in KEYS)
    assert len(metrics["per_class"]) == 80


def test_cli_max_dets_and_backend():
    proc = run_cli(GT_FILE, RES_FILE, "--backend", "pycocotools", "--max-dets", "1", "10", "300")
    assert proc.returncode == 0, proc.stderr
    assert "maxDets=300 ] = 0.595" in proc.stdout and "maxDets=100" not in proc.stdout


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown_image"])
def test_cli_errors_are_one_line(case, tmp_path):
    bad = tmp_path / "bad.json"
    if case == "missing":
        args, expect = (tmp_path / "nope.json", RES_FILE), "nope.json"
    elif case == "malformed":
        bad.write_text('[{"image_id": 42,')
        args, expect = (GT_FILE, bad), "not valid JSON"
    else:
        bad.write_text(json.dumps([det(123456789, 1, [0, 0, 5, 5], 0.5)]))
        args, expect = (GT_FILE, bad), "image_id 123456789"
    proc = run_cli(*args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and expect in proc.stderr
    assert "Traceback" not in proc.stderr

"""train.sh / test.sh end to end on a tiny generated dataset: output-dir files, eval.json, one-line errors."""
import json
import os

import pytest

# --framework -> the files of one checkpoint
CHECKPOINT_FILES = {"torch": (".pth",), "paddle": (".pdparams", ".pdopt")}


@pytest.mark.parametrize("framework", sorted(CHECKPOINT_FILES))
def test_train_then_test_writes_the_documented_files(tmp_path, tiny, run_sh, framework):
    out = str(tmp_path / "run")
    fw = ["--framework", framework]
    r = run_sh("train.sh", *fw, "-c", "configs/demo.yml", "-o", *tiny, "train.epochs=2", "train.eval_interval=1",
               f"output_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in r.stdout
    ckpts = [f"checkpoint_{kind}{ext}" for kind in ("last", "best") for ext in CHECKPOINT_FILES[framework]]
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "eval.json", "results.json", *ckpts):
        assert os.path.isfile(os.path.join(out, name)), name
    ev = json.load(open(os.path.join(out, "eval.json")))
    for key in ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"):
        assert isinstance(ev[key], float)
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert {x["kind"] for x in lines} == {"train", "eval"}
    assert sum(x["kind"] == "eval" for x in lines) == 2  # eval_interval 1, two epochs
    assert lines[-1]["epoch"] == 2
    assert ev["framework"] == framework

    # test.sh evaluates the checkpoint and reproduces the final evaluation exactly.
    out2 = str(tmp_path / "eval")
    last = os.path.join(out, "checkpoint_last" + CHECKPOINT_FILES[framework][0])
    r = run_sh("test.sh", *fw, "-c", "configs/demo.yml", "--resume", last, "-o", *tiny, f"output_dir={out2}")
    assert r.returncode == 0, r.stderr[-3000:]
    ev2 = json.load(open(os.path.join(out2, "eval.json")))
    assert ev2["bbox_AP"] == ev["bbox_AP"] and ev2["bbox_AP50"] == ev["bbox_AP50"]


@pytest.mark.parametrize("framework", sorted(CHECKPOINT_FILES))
def test_bad_checkpoints_are_one_line(tmp_path, tiny, run_sh, framework):
    ext = CHECKPOINT_FILES[framework][0]
    fw = ["--framework", framework]
    missing = tmp_path / f"missing{ext}"
    r = run_sh("test.sh", *fw, "-c", "configs/demo.yml", "--resume", str(missing), "-o", *tiny,
               f"output_dir={tmp_path / 'x'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"test.sh: checkpoint not found: {missing}"

    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(b"not a checkpoint")
    r = run_sh("test.sh", *fw, "-c", "configs/demo.yml", "--resume", str(bad), "-o", *tiny,
               f"output_dir={tmp_path / 'y'}")
    assert r.returncode == 2 and f"cannot read checkpoint {bad}" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_train_errors_are_one_line(tmp_path, tiny, tiny_data, run_sh):
    r = run_sh("train.sh", "-c", "configs/demo.yml", "-o", "train.nope=1", f"output_dir={tmp_path / 'w'}")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("train.sh: ")
    assert "unknown key 'train.nope'" in r.stderr

    r = run_sh("train.sh", "-c", "configs/demo.yml", "-o", *tiny_data, "data.train.ann_file=/nonexistent/a.json",
               f"output_dir={tmp_path / 'z'}")
    assert r.returncode == 2 and "data.train.ann_file: no such file '/nonexistent/a.json'" in r.stderr


def test_bad_data_is_one_line(tmp_path, tiny, tiny_data, run_sh):
    """A missing image surfaces as one line naming the file (exit 1), not a traceback from inside the loader."""
    ann = dict(x.split("=", 1) for x in tiny_data)["data.train.ann_file"]
    data = json.load(open(ann))
    data["images"][0]["file_name"] = "missing.jpg"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    r = run_sh("train.sh", "-c", "configs/demo.yml", "-o", *tiny, f"data.train.ann_file={broken}",
               "train.max_iters=3", f"output_dir={tmp_path / 'out'}")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train.sh: FileNotFoundError: image file not found: ") and "missing.jpg" in last
    assert "DETR_TRACEBACK=1" in last and "Traceback" not in r.stderr

"""cgmed-eval on bad settings, broken model directories and unreadable images: a message naming
the key, the missing files or the record, never a traceback or a silently smaller test set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cgmed.cli.eval import summary_lines
from cgmed.errors import BadImageError, ConfigError
from cgmed.eval.run import evaluate, results_document
from cgmed.eval.score import EvalConfig, load_for_eval
from tests.conftest import write_png

SIZE = 56  # the tiny model's image size
OPTIONS = ["Cancer", "Normal"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from cgmed.models.tiny import init_tiny

    out = tmp_path_factory.mktemp("tiny") / "qwen2_vl"
    init_tiny("qwen2_vl", out)
    return out


def broken_copy(tiny: Path, where: Path, *drop: str) -> Path:
    """A copy of the tiny checkpoint without the files ``drop``."""
    out = where / "final"
    shutil.copytree(tiny, out)
    for name in drop:
        (out / name).unlink()
    return out


def record(k: int, image: Path) -> dict:
    return {
        "id": f"q{k}",
        "subset": "01",
        "modality": "CT",
        "area": "Lung",
        "task": "Cancer",
        "image": str(image),
        "label": OPTIONS[k % 2],
        "question": "Which?\nA: Cancer\nB: Normal\nAnswer with the option's letter from the given choices directly.",
        "options": OPTIONS,
        "answer": "AB"[k % 2],
    }


def truncated_png(path: Path) -> Path:
    write_png(path, seed=99, size=SIZE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def bad_manifest(tmp_path, monkeypatch) -> Path:
    """Six questions: q2's image is a truncated PNG, q4's larger than PIL's decompression-bomb limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4 * SIZE * SIZE)
    images = tmp_path / "images"
    rows = []
    for k in range(6):
        path = images / f"{k}.png"
        if k == 2:
            truncated_png(path)
        elif k == 4:  # more than twice MAX_IMAGE_PIXELS: a DecompressionBombError, not a warning
            write_png(path, seed=k, size=4 * SIZE)
        else:
            write_png(path, seed=k, size=SIZE)
        rows.append(record(k, path))
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# --- validation at the boundary -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("bootstrap", -1), ("batch_size", 0), ("max_new_tokens", 0), ("max_bad_images", -1)],
)
def test_eval_settings_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"config key 'eval.{key}'"):
        EvalConfig(**{key: value})


def test_bootstrap_zero_reports_no_interval():
    rows = [
        {"id": f"q{k}", "subset": "01", "modality": "CT", "area": "Lung", "task": "Cancer"}
        | {"options": OPTIONS, "answer": "A", "pred": "A", "correct": k % 2 == 0}
        for k in range(4)
    ]
    doc = results_document(rows, rows, EvalConfig(bootstrap=0), None, None, "m", "t")
    assert doc["overall"]["ci95"] is None and doc["per_subset"]["01"]["ci95"] is None
    assert doc["per_mat"]["CT Lung Cancer"]["ci95"] is None
    assert doc["interval"] == "none (eval.bootstrap=0)"
    text = summary_lines(doc)
    assert "no interval (eval.bootstrap=0)" in text and "CI" not in text
    with_interval = results_document(rows, rows, EvalConfig(bootstrap=100), None, None, "m", "t")
    assert len(with_interval["overall"]["ci95"]) == 2 and "95% CI" in summary_lines(with_interval)


# --- broken model directories ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (["model.safetensors"], r"no weights \(model\.safetensors"),
        (["processor_config.json"], r"no image processor config \(preprocessor_config\.json"),
        (["tokenizer.json"], r"no tokenizer files \(tokenizer\.json"),
        (["tokenizer_config.json"], r"no tokenizer_config\.json"),
        (["chat_template.jinja"], r"no chat template \(chat_template\.jinja"),
    ],
)
def test_broken_model_directory_is_named(tiny, tmp_path, drop, named):
    final = broken_copy(tiny, tmp_path, *drop)
    with pytest.raises(ConfigError, match=f"(?s)config key 'model.path'.*{final}.*{named}.*fix: ") as info:
        load_for_eval(final)
    assert "qwen2_vl" in str(info.value)


def test_missing_shard_of_an_index_is_named(tiny, tmp_path):
    final = broken_copy(tiny, tmp_path, "model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (final / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(tiny / "model.safetensors", final / "model-00001-of-00002.safetensors")
    with pytest.raises(ConfigError, match=r"model-00002-of-00002\.safetensors"):
        load_for_eval(final)


def test_adapter_directory_without_weights_is_named(tiny, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny)}))
    with pytest.raises(ConfigError, match=r"(?s)LoRA adapter.*adapter_model\.safetensors"):
        load_for_eval(adapter)


def test_adapter_on_a_broken_base_names_the_base(tiny, tmp_path):
    base = broken_copy(tiny, tmp_path, "tokenizer.json")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=f"(?s){base}.*no tokenizer files"):
        load_for_eval(adapter)


def test_cli_names_the_missing_files(tiny, tmp_path, bad_manifest):
    final = broken_copy(tiny, tmp_path, "model.safetensors", "processor_config.json")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cgmed.eval",
            f"model.path={final}",
            f"data.test_manifest={bad_manifest}",
            "eval.max_bad_images=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0
    assert "no weights" in out.stderr and "no image processor config" in out.stderr
    assert "Traceback" not in out.stderr


# --- unreadable images ----------------------------------------------------------------------


def test_bad_image_stops_by_default_naming_record_and_key(tiny, tmp_path, bad_manifest):
    with pytest.raises(BadImageError, match=r"(?s)record q2.*2\.png.*eval\.max_bad_images") as info:
        evaluate(str(tiny), EvalConfig(bootstrap=0), str(bad_manifest), tmp_path / "eval")
    assert "2 of 6" in str(info.value) and "q4" in str(info.value)
    assert not (tmp_path / "eval" / "results.json").exists()


def test_bad_images_over_the_limit_stop(tiny, tmp_path, bad_manifest):
    with pytest.raises(BadImageError, match=r"more than eval\.max_bad_images=1"):
        evaluate(str(tiny), EvalConfig(bootstrap=0, max_bad_images=1), str(bad_manifest), tmp_path / "eval")


@pytest.mark.parametrize("method", ["option_scoring", "generation"])
def test_bad_images_within_the_limit_are_scored_wrong(tiny, tmp_path, bad_manifest, method):
    cfg = EvalConfig(method=method, bootstrap=0, max_bad_images=2, max_new_tokens=2, batch_size=4)
    doc = evaluate(str(tiny), cfg, str(bad_manifest), tmp_path / "eval")
    preds = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [f"q{k}" for k in range(6)]  # none dropped, manifest order
    bad = {p["id"]: p for p in preds if p.get("bad_image")}
    assert sorted(bad) == ["q2", "q4"]
    assert all(p["correct"] is False and p["pred"] is None for p in bad.values())
    assert "DecompressionBombError" in bad["q4"]["image_error"]
    assert doc["overall"]["n"] == 6 and doc["bad_images"] == 2
    if method == "option_scoring":  # an unreadable image is not an unreadable answer
        assert doc["overall"]["unparsed"] == 0 and doc["unparsed"] == 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["bad_images"] == 2 and saved["max_bad_images"] == 2
    assert "2 unreadable images scored wrong" in summary_lines(doc)


def test_unreadable_shot_image_stops_naming_the_pool(tiny, tmp_path):
    images = tmp_path / "images"
    test_rows = [record(k, images / f"t{k}.png") for k in range(2)]
    pool_rows = [record(k, images / f"p{k}.png") for k in range(2)]
    for seed, r in enumerate(test_rows + pool_rows):
        write_png(Path(r["image"]), seed=seed, size=SIZE)
    truncated_png(Path(pool_rows[1]["image"]))
    manifest, pool = tmp_path / "test.jsonl", tmp_path / "shots.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    pool.write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    cfg = EvalConfig(bootstrap=0, shots=1, shot_pool=str(pool), max_bad_images=5)
    with pytest.raises(BadImageError, match=r"(?s)shots\.jsonl.*record q1.*p1\.png"):
        evaluate(str(tiny), cfg, str(manifest), tmp_path / "eval")


def test_two_processes_agree_on_bad_images(tiny, tmp_path, bad_manifest):
    """Each process screens its own shard; the count against the limit is over all of them, so
    every process stops (none waits forever for the others) or none does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CGMED_TEST_MAX_IMAGE_PIXELS": str(4 * SIZE * SIZE)}

    def launch(limit: int, out: Path) -> subprocess.CompletedProcess:
        code = (
            "import os, sys; from PIL import Image; "
            "Image.MAX_IMAGE_PIXELS = int(os.environ['CGMED_TEST_MAX_IMAGE_PIXELS']); "
            "from cgmed.cli.eval import main; main()"
        )
        script = tmp_path / "eval_with_low_bomb_limit.py"
        script.write_text(code)
        args = [f"model.path={tiny}", f"data.test_manifest={bad_manifest}", f"eval.max_bad_images={limit}"]
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
            + [str(script), *args, "eval.bootstrap=0", f"hydra.run.dir={out}"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    # one bad image per shard: within the limit of 1 on each process, over it for the test set
    stopped = launch(1, tmp_path / "stopped")
    assert stopped.returncode != 0 and "more than eval.max_bad_images=1" in stopped.stderr
    finished = launch(2, tmp_path / "finished")
    assert finished.returncode == 0, finished.stderr[-3000:]
    preds = [json.loads(x) for x in (tmp_path / "finished" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds if p.get("bad_image")] == ["q2", "q4"] and len(preds) == 6

"""`llmloop predict` on a real model: scikit-learn's digits written as PNG class folders, a resnet10t
trained on them by the real trainer, then held-out images predicted from a class-folder tree, a flat
folder and CSVs; flip TTA; GEN_HEAD, archive names and a top-k ensemble; bad inputs named by row;
and the commands the final report prints. Nothing is mocked."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from loop.archive import freeze as archive
from loop.archive.headswitch import cutover
from loop.archive.lineage import LineageRow, upsert_lineage
from loop.archive.paths import ModelPaths
from loop.cli.main import main
from loop.config import validate
from loop.deploy import predict as predict_module
from loop.deploy.commands import TEST_IMAGES, usage_commands
from loop.journal.metrics import RunMetrics
from loop.trainer.config import TrainerConfig, load_trainer_config
from loop.trainer.models import load_model_folder, save_model_folder
from loop.trainer.train import train
from tests._session import built_once
from tests.conftest import run_cli

TRAIN_IMAGES, TEST_IMAGES_COUNT = 600, 150
SIZE = 16


@dataclass(frozen=True)
class Task:
    root: Path
    train: Path           # class-folder tree the model learned from
    test: Path            # held-out class-folder tree
    run: Path             # the trained run folder
    val_accuracy: float
    config: TrainerConfig


def trained_task(tmp_path_factory) -> Task:
    """Digits as 16x16 grayscale PNGs in class folders (600 to train on, 150 held out), and a
    resnet10t trained on them for 3 epochs (about 12 s on 2 cores). Made once per test run (every
    xdist worker reads the same): the export tests reuse the same folder."""
    def config(root: Path) -> TrainerConfig:
        return validate(TrainerConfig, {
            "data": {"domain": "image_folder", "domain_args": {"root": str(root / "train"), "mode": "L"},
                     "image_size": SIZE, "batch_size": 32, "num_workers": 0},
            "model": {"name": "resnet10t"}, "optim": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "cosine", "warmup_epochs": 0},
            "run": {"seed": 7, "epochs": 3, "threads": 2, "log_every_steps": 50}}, "<deploy test>")

    def build(root: Path) -> None:
        from PIL import Image
        from sklearn.datasets import load_digits

        digits = load_digits()
        for i in range(TRAIN_IMAGES + TEST_IMAGES_COUNT):
            folder = root / ("train" if i < TRAIN_IMAGES else "test") / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).resize((SIZE, SIZE), Image.NEAREST).save(folder / f"d{i:04d}.png")
        train(config(root), root / "run")

    root = built_once(tmp_path_factory, "deploy-task", build)
    metrics = RunMetrics.read(root / "run")
    return Task(root, root / "train", root / "test", root / "run", metrics.eval.accuracy, config(root))


def freeze_entry(paths: ModelPaths, run_dir: Path, name: str, gen: int, val_accuracy: float | None) -> Path:
    """An archive entry as the pipeline freezes one, with a metrics.json that records the probes'
    val accuracy (or none), and its lineage row."""
    texts = {f: f"{f} of {name}\n" for f in archive.WRITTEN}
    texts["metrics.json"] = json.dumps({"probes": None if val_accuracy is None else {"val_accuracy": val_accuracy},
                                        "training": None}) + "\n"
    texts["STATUS.txt"] = "PASS\n"
    entry = archive.freeze(paths, name, run_dir, texts)
    upsert_lineage(paths.lineage, LineageRow(name=name, gen_id=gen, branch_id="a", seed=1, strategy="uniform",
                                             status=entry.status, score=0.5, archive_path=str(entry.path),
                                             hashes_sha256=entry.hashes_sha256))
    return entry.path


def build_archive(task: Task, where: Path) -> ModelPaths:
    """m-G001-a: the trained run (GEN_HEAD); m-G002-a: its weights perturbed, read at 20 px;
    m-G003-a: the same weights with other class names; m-G004-a: a run that saved no weights."""
    paths = ModelPaths(where)
    freeze_entry(paths, task.run, "m-G001-a", 1, task.val_accuracy)
    model, cfg = load_model_folder(task.run)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * p.std().nan_to_num(0) * torch.randn_like(p))
    for name, update in (("perturbed", {"image_size": 20}),
                         ("renamed", {"class_names": [f"digit_{c}" for c in cfg.class_names]})):
        folder = where.parent / f"{where.name}-{name}"
        save_model_folder(folder, model, cfg.model_copy(update=update))
        shutil.copy(task.run / "train_args.json", folder)
    freeze_entry(paths, where.parent / f"{where.name}-perturbed", "m-G002-a", 2, task.val_accuracy - 0.05)
    freeze_entry(paths, where.parent / f"{where.name}-renamed", "m-G003-a", 3, 0.3)
    empty = where.parent / f"{where.name}-failed"
    empty.mkdir()
    (empty / "train.log").write_text("killed before the first epoch\n")
    freeze_entry(paths, empty, "m-G004-a", 4, None)
    cutover(paths, "m-G001-a")
    return paths


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Task:
    return trained_task(tmp_path_factory)


@pytest.fixture(scope="module")
def archive_paths(task, tmp_path_factory) -> ModelPaths:
    return build_archive(task, tmp_path_factory.mktemp("deploy-archive") / "ws")


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def probabilities(path: Path) -> dict[str, np.ndarray]:
    header, rows = read_csv(path)
    return {r[0]: np.array([float(v) for v in r[1:]]) for r in rows}


def predict(*args: str) -> int:
    return main(["predict", *map(str, args)])


@pytest.fixture(scope="module")
def tree(task, tmp_path_factory):
    """The held-out class-folder tree predicted with the run folder (progress shown, as on a long set)."""
    out = tmp_path_factory.mktemp("tree") / "submission.csv"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.setattr(predict_module, "PROGRESS_MIN_IMAGES", 1)
        code = predict("--model", task.run, "--images", task.test, "--out", out, "--batch-size", 64)
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), probabilities(out.with_name("submission.probabilities.csv"))


def test_class_tree_submission_probabilities_and_accuracy(task, tree):
    out, stdout, stderr, probs = tree
    header, rows = read_csv(out)
    files = sorted(task.test.rglob("*.png"))
    truth = {f.stem: f.parent.name for f in files}
    assert header == ["id", "label"] and len(rows) == TEST_IMAGES_COUNT == len(files)
    assert [r[0] for r in rows] == [f.stem for f in files]             # class folders in order, then names
    classes = [str(c) for c in range(10)]
    assert {r[1] for r in rows} <= set(classes)
    prob_header, _ = read_csv(out.with_name("submission.probabilities.csv"))
    assert prob_header == ["id", *classes] and list(probs) == [r[0] for r in rows]
    for sid, label in rows:
        assert abs(probs[sid].sum() - 1) < 1e-5 and classes[int(probs[sid].argmax())] == label
    correct = sum(label == truth[sid] for sid, label in rows)
    m = re.search(r"accuracy (\d\.\d+) \((\d+)/150\), 95% interval \[(\d\.\d+), (\d\.\d+)\] \(Wilson\)", stdout)
    assert m, stdout
    assert int(m[2]) == correct and abs(float(m[1]) - correct / 150) < 1e-4
    assert float(m[3]) < correct / 150 < float(m[4])
    assert correct / 150 > 0.6, stdout                                 # a trained model, not chance
    assert "progress 150/150" in stderr                                # the long-set progress lines


def test_flat_folder_ids_are_stems_and_batches_do_not_matter(task, tree, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    files = sorted(task.test.rglob("*.png"))[::5]
    for f in files:
        shutil.copy(f, flat / f.name)
    probs_out = tmp_path / "elsewhere" / "p.csv"
    assert predict("--model", task.run, "--images", flat, "--out", tmp_path / "s.csv", "--batch-size", 7,
                   "--probabilities", probs_out, "--device", "cpu") == 0
    stdout = capsys.readouterr().out
    assert "accuracy" not in stdout and f"predicted {len(files)} image(s)" in stdout
    header, rows = read_csv(tmp_path / "s.csv")
    assert [r[0] for r in rows] == sorted(f.stem for f in files)
    assert not (tmp_path / "s.probabilities.csv").exists()
    flat_probs = probabilities(probs_out)
    for sid, p in flat_probs.items():                  # the same image, other batches: the same answer
        np.testing.assert_allclose(p, tree[3][sid], atol=1e-5)


def test_csv_test_sets_by_id_and_by_path(task, tree, tmp_path, capsys):
    """By id with labels and renamed columns (a real subprocess), then by relative path, unlabelled."""
    images = tmp_path / "images"
    images.mkdir()
    files = sorted(task.test.rglob("*.png"))[:30]
    for f in files:
        shutil.copy(f, images / f.name)
    listing = tmp_path / "test.csv"
    listing.write_text("ImageId,truth\n" + "".join(f"{f.stem},{f.parent.name}\n" for f in reversed(files)))
    out = tmp_path / "sub.csv"
    done = run_cli("predict", "--model", str(task.run), "--images", str(listing), "--csv-images", str(images),
                   "--id-column", "ImageId", "--label-column", "truth", "--out", str(out),
                   "--out-id-column", "ImageId", "--out-label-column", "Label")
    assert done.returncode == 0, done.stderr[-3000:]
    header, rows = read_csv(out)
    assert header == ["ImageId", "Label"] and [r[0] for r in rows] == [f.stem for f in reversed(files)]
    assert re.search(r"accuracy \d\.\d+ \(\d+/30\)", done.stdout), done.stdout
    assert read_csv(tmp_path / "sub.probabilities.csv")[0][0] == "ImageId"
    for sid, label in rows:
        assert label == str(int(tree[3][sid].argmax()))

    by_path = tmp_path / "paths.csv"                   # relative paths under --csv-images, no labels
    by_path.write_text("file\n" + "".join(f"{f.relative_to(task.test)}\n" for f in files[:10]))
    assert predict("--model", task.run, "--images", by_path, "--csv-images", task.test, "--path-column", "file",
                   "--out", tmp_path / "p.csv") == 0
    assert "accuracy" not in capsys.readouterr().out
    _, rows = read_csv(tmp_path / "p.csv")
    assert [r[0] for r in rows] == [f.stem for f in files[:10]]


def test_flip_tta_changes_probabilities_and_is_mirror_symmetric(task, tree, tmp_path):
    from PIL import Image, ImageOps

    files = sorted(task.test.rglob("*.png"))[:20]
    plain, mirrored = tmp_path / "plain", tmp_path / "mirrored"
    plain.mkdir()
    mirrored.mkdir()
    for f in files:
        shutil.copy(f, plain / f.name)
        ImageOps.mirror(Image.open(f)).save(mirrored / f.name)
    assert predict("--model", task.run, "--images", plain, "--out", tmp_path / "a.csv", "--tta", "flip") == 0
    assert predict("--model", task.run, "--images", mirrored, "--out", tmp_path / "b.csv", "--tta", "flip") == 0
    a, b = probabilities(tmp_path / "a.probabilities.csv"), probabilities(tmp_path / "b.probabilities.csv")
    assert list(a) == sorted(f.stem for f in files)
    diffs = [np.abs(a[s] - tree[3][s]).max() for s in a]
    assert max(diffs) > 1e-3                           # TTA is not a no-op ...
    for s in a:
        assert a[s].shape == (10,) and abs(a[s].sum() - 1) < 1e-5
        np.testing.assert_allclose(a[s], b[s], atol=1e-5)   # ... and averages an image with its mirror


def test_gen_head_archive_names_and_ensemble(task, tree, archive_paths, tmp_path, capsys):
    ws = archive_paths.workspace
    assert predict("--model", "GEN_HEAD", "--workspace", ws, "--images", task.test, "--out", tmp_path / "h.csv") == 0
    stdout = capsys.readouterr().out
    assert "GEN_HEAD (m-G001-a)" in stdout
    assert re.search(rf"recorded val accuracy {task.val_accuracy:.4f} \(GEN_HEAD \(m-G001-a\)\) is (inside|OUTSIDE) "
                     "the interval", stdout), stdout
    head = probabilities(tmp_path / "h.probabilities.csv")
    for sid in head:
        np.testing.assert_allclose(head[sid], tree[3][sid], atol=1e-6)
    assert predict("--model", "m-G002-a", "--workspace", ws, "--images", task.test, "--out", tmp_path / "b.csv") == 0
    second = probabilities(tmp_path / "b.probabilities.csv")
    assert max(np.abs(second[s] - head[s]).max() for s in head) > 1e-3     # another model (and 20 px input)

    assert predict("--ensemble", 2, "--workspace", ws, "--images", task.test, "--out", tmp_path / "e.csv") == 0
    stdout = capsys.readouterr().out
    assert "with m-G001-a + m-G002-a" in stdout
    assert f"members' recorded val accuracy: m-G001-a {task.val_accuracy:.4f}, m-G002-a " in stdout
    ensemble = probabilities(tmp_path / "e.probabilities.csv")
    for sid in ensemble:
        np.testing.assert_allclose(ensemble[sid], (head[sid] + second[sid]) / 2, atol=1e-5)

    assert predict("--ensemble", 3, "--workspace", ws, "--images", task.test, "--out", tmp_path / "x.csv") == 2
    err = capsys.readouterr().err
    assert "m-G003-a has classes ['digit_0'" in err and "same class names" in err
    assert not (tmp_path / "x.csv").exists()


def test_ensemble_leaves_out_unranked_entries(task, archive_paths, tmp_path, capsys):
    ws = archive_paths.workspace
    assert predict("--ensemble", 4, "--workspace", ws, "--images", task.test, "--out", tmp_path / "x.csv") == 2
    err = capsys.readouterr().err
    assert "--ensemble 4: only 3 archive entries" in err and "left out: m-G004-a" in err
    assert predict("--model", "m-G004-a", "--workspace", ws, "--images", task.test, "--out", tmp_path / "x.csv") == 2
    assert "archive entry m-G004-a has no weights" in capsys.readouterr().err
    assert predict("--model", "no-such-entry", "--workspace", ws, "--images", task.test,
                   "--out", tmp_path / "x.csv") == 2
    assert "neither a folder nor an archive entry" in capsys.readouterr().err


def test_bad_inputs_are_named(task, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert predict("--model", task.run, "--images", tmp_path / "missing", "--out", out) == 5
    assert f"--images {tmp_path / 'missing'}: no such folder or CSV file" in capsys.readouterr().err

    images = tmp_path / "images"
    images.mkdir()
    files = sorted(task.test.rglob("*.png"))[:6]
    for f in files:
        shutil.copy(f, images / f.name)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("name\n" + "".join(f"{f.stem}\n" for f in files))
    assert predict("--model", task.run, "--images", no_id, "--csv-images", images, "--out", out) == 5
    assert "no column 'id'; its columns are name" in capsys.readouterr().err

    listing = tmp_path / "test.csv"
    ids = [f.stem for f in files[:2]] + ["broken"] + [f.stem for f in files[2:]]
    listing.write_text("id\n" + "".join(f"{i}\n" for i in ids))
    assert predict("--model", task.run, "--images", listing, "--csv-images", images, "--out", out) == 5
    err = capsys.readouterr().err
    assert "1 bad image entry: CSV row 4: not a readable image" in err and "broken.png" in err
    assert not out.exists()

    assert predict("--model", task.run, "--images", listing, "--csv-images", images, "--out", out,
                   "--skip-bad-images") == 0
    stdout = capsys.readouterr().out
    assert "skipped (--skip-bad-images): CSV row 4: not a readable image" in stdout
    _, rows = read_csv(out)
    assert [r[0] for r in rows] == [f.stem for f in files]

    assert predict("--model", tmp_path, "--images", images, "--out", out) == 2
    assert "is a folder but not a model folder" in capsys.readouterr().err
    assert predict("--model", task.run, "--images", images, "--out", out, "--out-id-column", "3") == 2
    assert "is also a class name" in capsys.readouterr().err


def test_usage_commands_reproduce_and_predict(task, archive_paths, tmp_path, capsys):
    ws = archive_paths.workspace
    commands = usage_commands(ws, "GEN_HEAD")
    reproduce = shlex.split(commands["reproduce"])
    assert reproduce[:3] == ["llmloop", "train", "--config"] and "--out" in reproduce
    config = Path(reproduce[3])
    assert config == archive_paths.entry("m-G001-a") / "train_args.json"
    assert load_trainer_config(config) == task.config          # the exact config that trained it
    assert commands["predict"].startswith("llmloop predict --model m-G001-a --workspace ")
    assert f"--images {TEST_IMAGES} --out submission.csv" in commands["predict"]
    assert "--format onnx" in commands["export"]
    args = shlex.split(commands["predict"].replace(TEST_IMAGES, shlex.quote(str(task.test)))
                       .replace("submission.csv", shlex.quote(str(tmp_path / "submission.csv"))))
    assert main(args[1:]) == 0 and (tmp_path / "submission.csv").exists()
    assert "accuracy" in capsys.readouterr().out

    by_folder = usage_commands(ws, str(task.run))
    assert f"--model {task.run}" in by_folder["predict"] and "--workspace" not in by_folder["predict"]


def test_a_tampered_archive_entry_never_predicts(task, tmp_path, capsys):
    paths = ModelPaths(tmp_path / "ws")
    entry = freeze_entry(paths, task.run, "m-G001-a", 1, task.val_accuracy)
    weights = entry / "model.safetensors"
    weights.chmod(0o644)
    with open(weights, "r+b") as fh:                  # one byte of the weights flipped
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert predict("--model", "m-G001-a", "--workspace", paths.workspace, "--images", task.test,
                   "--out", tmp_path / "s.csv") == 7
    assert "m-G001-a: model.safetensors was changed" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()

"""`llmloop export`: the trained digits model (tests/test_predict.py's) as ONNX, run by onnxruntime,
and as TorchScript, reloaded by torch.jit: logits within 1e-4 of PyTorch's, normalisation inside
the graph (raw uint8 pixels in, so its softmax equals `llmloop predict`'s probabilities), the
metadata in the file and beside it; and the install hint when onnxruntime is missing."""
from __future__ import annotations

import json
import re
import sys
import warnings

import numpy as np
import pytest
import torch

from loop.cli.main import main
from loop.deploy.export import EXTRA_FILE, TOLERANCE, ExportMetadata
from loop.domains.listing import list_folder
from loop.domains.pixels import PixelSource, PixelView
from tests.test_predict import build_archive, probabilities, trained_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return trained_task(tmp_path_factory)


@pytest.fixture(scope="module")
def held_out(task, tmp_path_factory):
    """The held-out images as the exported model takes them (uint8 NCHW at 16 px, from the shared
    cache) and `llmloop predict`'s probabilities for them."""
    listing = list_folder(task.test)
    view = PixelView(PixelSource(1, paths=tuple(listing.paths)).decoded(16), np.arange(len(listing)))
    out = tmp_path_factory.mktemp("export-predict") / "s.csv"
    assert main(["predict", "--model", str(task.run), "--images", str(task.test), "--out", str(out)]) == 0
    probs = probabilities(out.with_name("s.probabilities.csv"))
    return view.numpy(slice(None)).transpose(0, 3, 1, 2).copy(), np.stack([probs[i] for i in listing.ids])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reported_diff(stdout: str) -> float:
    m = re.search(r"max abs logit difference (\S+) \(< 0\.0001\)", stdout)
    assert m, stdout
    return float(m[1])


def test_onnx_export_matches_and_carries_its_metadata(task, held_out, tmp_path_factory, capsys):
    import onnx
    import onnxruntime

    paths = build_archive(task, tmp_path_factory.mktemp("export-archive") / "ws")
    out = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    assert main(["export", "--model", "GEN_HEAD", "--workspace", str(paths.workspace), "--format", "onnx",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    diff = reported_diff(stdout)
    print(f"ONNX max abs logit difference: {diff:.3g}")
    assert diff < TOLERANCE and "onnxruntime" in stdout

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["class_names"]) == [str(c) for c in range(10)]
    assert json.loads(props["image_size"]) == 16 and json.loads(props["in_chans"]) == 1
    assert len(json.loads(props["mean"])) == 1 and len(json.loads(props["std"])) == 1
    assert props["input_dtype"] == "uint8" and props["input_layout"] == "NCHW"
    beside = ExportMetadata.model_validate_json(out.with_name("digits.onnx.json").read_text())
    assert beside.archive_name == "m-G001-a" and beside.check.max_abs_logit_diff == pytest.approx(diff, rel=1e-2)
    assert ExportMetadata.model_validate_json(props["llmloop"]).class_names == beside.class_names

    images, expected = held_out               # raw pixels in, whole held-out set as one dynamic batch
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images})[0]
    assert logits.shape == (150, 10)
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-4)


def test_torchscript_export_matches_and_carries_its_metadata(task, held_out, tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert main(["export", "--model", str(task.run), "--format", "torchscript", "--out", str(out)]) == 0
    diff = reported_diff(capsys.readouterr().out)
    assert diff < TOLERANCE

    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)          # torch.jit's deprecation notice
        scripted = torch.jit.load(str(out), map_location="cpu", _extra_files=extra)
    inside = ExportMetadata.model_validate_json(extra[EXTRA_FILE])
    beside = ExportMetadata.model_validate_json((tmp_path / "digits.pt.json").read_text())
    assert inside.format == beside.format == "torchscript" and inside.class_names == [str(c) for c in range(10)]
    assert inside.input_shape == ["batch", 1, 16, 16]
    assert beside.check.max_abs_logit_diff == pytest.approx(diff, rel=1e-2)

    images, expected = held_out
    with torch.no_grad():
        logits = scripted(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-4)


def test_missing_onnxruntime_says_how_to_install(task, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)      # `import onnxruntime` now fails
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(task.run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs the onnxruntime package, which is not installed" in err
    assert "pip install 'llmloop[export]'" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_refuses_an_unknown_model(tmp_path, capsys):
    assert main(["export", "--model", "nothing-here", "--workspace", str(tmp_path), "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "--model nothing-here: neither a folder nor an archive entry" in capsys.readouterr().err

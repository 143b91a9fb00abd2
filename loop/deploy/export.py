"""`llmloop export`: a model folder as one self-contained file for serving, ONNX or TorchScript.

The exported graph takes what a user has, raw pixels: uint8, NCHW, (batch, in_chans, image_size,
image_size), 0-255, and normalises inside (mean/std of the training data), so no serving code can
get the normalisation wrong; it returns logits in class_names order. What it expects travels with
it twice: in the file (ONNX metadata_props / TorchScript _extra_files) and in `<out>.json`.
Every export is checked before it is put in place: the written file, run by onnxruntime (ONNX) or
reloaded by torch.jit (TorchScript) on a seeded sample batch of another batch size than the one it
was traced with, must match the PyTorch model's logits within 1e-4 on CPU, or the export fails.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel

from loop.deploy.resolve import ModelRef
from loop.errors import ConfigError, LoopError
from loop.trainer.models import load_model_folder
from loop.util.fsutil import atomic_write_bytes, atomic_write_text

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
ONNX_OPSET = 17
EXTRA_FILE = "llmloop.json"      # the TorchScript archive's own copy of the metadata
INSTALL_HINT = "pip install 'llmloop[export]'"
TRACE_BATCH, CHECK_BATCH = 2, 5  # different on purpose: the check proves the batch axis is dynamic


class ExportCheck(BaseModel):
    runtime: str                 # "onnxruntime 1.32.0 (CPUExecutionProvider)" / "torch.jit.load 2.14.1"
    batch: int
    max_abs_logit_diff: float
    tolerance: float = TOLERANCE


class ExportMetadata(BaseModel):
    """What a serving program needs to feed the exported model (also `<out>.json`)."""

    format: Literal["onnx", "torchscript"]
    model: str                   # the --model it came from
    source_folder: str
    archive_name: str | None = None
    model_name: str              # the timm architecture
    class_names: list[str]
    num_classes: int
    in_chans: int
    image_size: int
    mean: list[float]
    std: list[float]
    input_name: str = "images"
    input_shape: list[str | int]
    input_layout: str = "NCHW"
    input_dtype: str = "uint8"
    normalization: str = ("inside the model: x = (pixels / 255 - mean) / std per channel; feed raw 0-255 pixels, "
                          "resized to image_size x image_size, RGB (or grayscale when in_chans is 1)")
    output_name: str = "logits"
    output: str = "logits (batch, num_classes) in class_names order; softmax gives probabilities"
    opset: int | None = None
    torch_version: str = torch.__version__
    check: ExportCheck | None = None


class Deployable(torch.nn.Module):
    """The model with its input normalisation in front: uint8 NCHW pixels in, logits out."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean255", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("std255", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean255) / self.std255)


def sample_batch(batch: int, in_chans: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, in_chans, size, size), generator=g, dtype=torch.uint8)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_model(ref: ModelRef, fmt: str, out: Path) -> ExportMetadata:
    """Export, check, then put the file and its JSON in place; returns the metadata written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    model, cfg = load_model_folder(ref.folder, "cpu")
    wrapped = Deployable(model, cfg.mean, cfg.std).eval()
    meta = ExportMetadata(format=fmt, model=ref.label, source_folder=str(ref.folder), archive_name=ref.archive_name,
                          model_name=cfg.model_name, class_names=cfg.class_names, num_classes=cfg.num_classes,
                          in_chans=cfg.in_chans, image_size=cfg.image_size, mean=cfg.mean, std=cfg.std,
                          input_shape=["batch", cfg.in_chans, cfg.image_size, cfg.image_size],
                          opset=ONNX_OPSET if fmt == "onnx" else None)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.exporting")
    try:
        data = (_onnx(wrapped, meta, tmp) if fmt == "onnx" else _torchscript(wrapped, meta, tmp))
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_bytes(out, data)
    atomic_write_text(sidecar_path(out), meta.model_dump_json(indent=2) + "\n")
    return meta


def require_onnx() -> None:
    """onnx and onnxruntime are an optional extra: say how to get them, before any work."""
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"--format onnx needs the {name} package, which is not installed: "
                              f"{INSTALL_HINT} (or pip install onnx onnxruntime)") from None


def _max_diff(expected: torch.Tensor, got) -> float:
    return float((expected.double() - torch.as_tensor(got).double()).abs().max())


def _checked(meta: ExportMetadata, check: ExportCheck) -> ExportMetadata:
    if not check.max_abs_logit_diff < TOLERANCE:
        raise LoopError(f"export check failed: the {meta.format} file's logits differ from PyTorch's by "
                        f"{check.max_abs_logit_diff:.3g} (>= {TOLERANCE:g}) on a sample batch of {check.batch} "
                        f"({check.runtime}); nothing was written")
    meta.check = check
    return meta


@torch.no_grad()
def _onnx(wrapped: Deployable, meta: ExportMetadata, tmp: Path) -> bytes:
    """torch's TorchScript-based ONNX exporter (`dynamo=False`): it needs only onnx, where the
    dynamo exporter also needs onnxscript; a dynamic batch axis on input and output."""
    import onnx
    import onnxruntime

    example = sample_batch(TRACE_BATCH, meta.in_chans, meta.image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the legacy exporter's deprecation notice
        torch.onnx.export(wrapped, (example,), str(tmp), dynamo=False, input_names=[meta.input_name],
                          output_names=[meta.output_name], opset_version=ONNX_OPSET,
                          dynamic_axes={meta.input_name: {0: "batch"}, meta.output_name: {0: "batch"}})
    proto = onnx.load(str(tmp))
    sample = sample_batch(CHECK_BATCH, meta.in_chans, meta.image_size, seed=1)
    expected = wrapped(sample)

    def run(blob: bytes) -> float:
        session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return _max_diff(expected, session.run([meta.output_name], {meta.input_name: sample.numpy()})[0])

    runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
    _checked(meta, ExportCheck(runtime=runtime, batch=CHECK_BATCH, max_abs_logit_diff=run(proto.SerializeToString())))
    fields = meta.model_dump(mode="json")
    onnx.helper.set_model_props(proto, {"llmloop": json.dumps(fields),
                                        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}})
    data = proto.SerializeToString()
    again = run(data)                            # the bytes that will be written, checked once more
    _checked(meta, ExportCheck(runtime=runtime, batch=CHECK_BATCH, max_abs_logit_diff=again))
    return data


@torch.no_grad()
def _torchscript(wrapped: Deployable, meta: ExportMetadata, tmp: Path) -> bytes:
    """torch.jit.trace (a timm CNN has no data-dependent control flow), saved with the metadata as
    an extra file, reloaded from disk and checked on another batch size; then saved again with the
    check's result in the metadata (the same traced graph: only the extra file differs)."""
    example = sample_batch(TRACE_BATCH, meta.in_chans, meta.image_size)
    sample = sample_batch(CHECK_BATCH, meta.in_chans, meta.image_size, seed=1)
    expected = wrapped(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torch.jit's deprecation notice
        # check_trace=False: its own re-run costs seconds, and the reloaded file is checked below
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: meta.model_dump_json()})
        extra = {EXTRA_FILE: ""}
        loaded = torch.jit.load(str(tmp), map_location="cpu", _extra_files=extra)
        with torch.jit.optimized_execution(False):   # the profiling executor's first runs take seconds
            diff = _max_diff(expected, loaded(sample))
    if not extra[EXTRA_FILE]:
        raise LoopError(f"export check failed: {tmp} reloaded without its {EXTRA_FILE}")
    _checked(meta, ExportCheck(runtime=f"torch.jit.load {torch.__version__}", batch=CHECK_BATCH,
                               max_abs_logit_diff=diff))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE: meta.model_dump_json()})
    return tmp.read_bytes()

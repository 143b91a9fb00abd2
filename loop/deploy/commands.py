"""The shell commands that reproduce a model and put it to use, for the final report to print."""
from __future__ import annotations

import shlex
from pathlib import Path

from loop.deploy.resolve import resolve_model

TRAIN_ARGS_FILE = "train_args.json"     # loop.trainer.train.TRAIN_ARGS_FILE, named here to stay torch-free
TEST_IMAGES = "<TEST_IMAGES>"           # a placeholder the reader replaces: a folder or a CSV


def usage_commands(workspace: str | Path, model_ref: str) -> dict[str, str]:
    """{"reproduce": ..., "predict": ..., "export": ...} for `model_ref` (GEN_HEAD, an archive entry
    name or a run folder) in `workspace`:
      reproduce  `llmloop train --config <folder>/train_args.json --out ...`: the run's own resolved
                 trainer config, which `llmloop train` takes as it is (left out when the folder has none)
      predict    `llmloop predict --model ... --images <TEST_IMAGES> --out submission.csv`
      export     `llmloop export --model ... --format onnx --out <name>.onnx`
    GEN_HEAD is written as the entry it points at now, so the commands stay right after the next
    promotion. Raises what `resolve_model` raises for a reference that is not there."""
    workspace = Path(workspace).expanduser().resolve()
    ref = resolve_model(model_ref, workspace)
    if ref.archive_name:
        model = ["--model", ref.archive_name, "--workspace", str(workspace)]
        name = ref.archive_name
    else:
        model = ["--model", str(ref.folder)]
        name = ref.folder.name
    quoted = " ".join(shlex.quote(a) for a in model)
    commands = {}
    config = ref.folder / TRAIN_ARGS_FILE
    if config.is_file():
        commands["reproduce"] = shlex.join(["llmloop", "train", "--config", str(config),
                                            "--out", f"artifacts/runs/{name}-repro"])
    commands["predict"] = f"llmloop predict {quoted} --images {TEST_IMAGES} --out submission.csv"
    commands["export"] = f"llmloop export {quoted} --format onnx --out {shlex.quote(name + '.onnx')}"
    return commands

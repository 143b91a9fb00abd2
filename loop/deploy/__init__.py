"""The morning's model, put to use: `llmloop predict` and `llmloop export`.

resolve.py   `--model`: GEN_HEAD, an archive entry (verified against its hashes) or a run folder;
             the top-k archive entries by recorded val accuracy (`--ensemble K`)
testset.py   the test images: a flat folder, a class-folder tree, or a CSV; labels when there are
predict.py   batched, streamed probabilities (flip TTA, ensembles) and the summary
writing.py   the submission and probabilities CSVs (atomic) and the Wilson accuracy interval
export.py    ONNX / TorchScript with normalisation inside, metadata in the file and beside it,
             checked against PyTorch before it is written
commands.py  the commands that reproduce a model and predict with it (for the final report)
"""

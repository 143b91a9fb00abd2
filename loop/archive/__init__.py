"""The promotion pipeline's store: `probes.py` and `gates.py` measure a model against GEN_HEAD,
`freeze.py` writes immutable, hashed archive entries (and verifies them), `lineage.py` is the
ledger, `lifecycle.py`/`store.py`/`checkpoints.py` track each candidate's 11 states,
`proposal.py` is the pending PROMOTION_PROPOSAL.json, `promotion.py` and `grafting.py` take it
through shadow, graft, cutover, burn-in and rollback; `headswitch.py` moves GEN_HEAD without
loading a model (cutover, reject, rollback: torch-free); `paths.py` names `ModelPaths`, which
loop/util/workspace.py defines with the rest of the workspace layout."""

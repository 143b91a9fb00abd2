"""Auto-repair: one recovery pass for a failed run (seed README, "Auto Repair (Install + Retry)").
Callers use `auto_repair` (and read its `RepairOutcome`); one job per module:

  apply.py     the pass: diagnose, plan, apply the steps in order, the command to retry
  diagnose.py  reading the failure: a missing module, a model name the trainer refused, or loader
               workers that cannot run here
  steps.py     the config maps -> steps, in the seed's order (and the step records)
  install.py   package pins and pip installs: pinned only, one index, wheels only, hashes
  clone.py     allowlisted clones at a full commit sha, in <workspace>/autofix_repos/
  fallback.py  a setting for the retry (data.num_workers=0), model-name fallbacks: a patched config
               copy in <workspace>/autofix_configs/
  command.py   the retry command: reading and rewriting its options

Supply-chain rules, since the commands that fail were written by an LLM: never a pip install of a
module name itself, only pinned map entries, from exactly one index; clones only from an allowlisted
URL prefix at a commit sha.
"""
from loop.run.repair.apply import RepairOutcome, auto_repair

__all__ = ["RepairOutcome", "auto_repair"]

"""Builder and Mentor. `schema.py` holds their JSON contracts (Decision, Review); `offline.py` is the
embedded policy that plays both roles without a network; `context.py` and `prompts.py` build what
they read; `space.py` (the search space and its TPE suggestions), `ladder.py` (the fidelity ladder:
screens, full runs, continuations), `cost.py` (what a run will cost) and `overlay.py` (what a
decision's train_overlay may set) serve the LLM and the offline policy alike. The LLM client is `llm.py`, with
`formats.py` (structured-output negotiation and the per-endpoint mode store), `retry.py` (what is
transient), `usage.py` (tokens, cost, the spend cap), `breaker.py` (the circuit breaker) and
`credentials.py` (API keys)."""

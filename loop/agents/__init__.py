"""Builder and Mentor. `schema.py` holds their JSON contracts (Decision, Review); `offline.py` is
the embedded policy that plays both roles without a network; `context.py` and `prompts.py` build
what they read. The LLM client is `llm.py`, with `formats.py` (structured-output negotiation and
the per-endpoint mode store), `retry.py` (what is transient), `usage.py` (tokens, cost, the spend
cap), `breaker.py` (the circuit breaker) and `credentials.py` (API keys)."""

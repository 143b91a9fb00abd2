"""Builder and Mentor: the LLM client, the offline policy, prompt context and the JSON contracts."""

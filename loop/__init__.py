"""llmloop: an autonomous LLM research loop for CNN training experiments."""
__version__ = "0.1.0"

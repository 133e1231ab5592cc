"""routellm-batch: nightly, offline LLM routing for data lakes."""

__version__ = "0.1.0"

"""A local HTTP server speaking the OpenAI and Anthropic batch APIs (tests, demos)."""

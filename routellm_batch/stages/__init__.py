"""The nightly stages, one module each, each with one entry point."""

"""Routers: prompts -> strong_win_prob. One family per module; see registry.py."""

"""Synthetic tasks with programmatic step checkers (the demo)."""

"""segflowd: a self-hosted, code-first customer messaging daemon."""

__version__ = "0.1.0"

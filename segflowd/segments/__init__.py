"""Segments: SQL validation, portable regeneration and stored membership."""

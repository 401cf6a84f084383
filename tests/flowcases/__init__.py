"""Flow modules and helpers that the campaign and scheduler tests import."""

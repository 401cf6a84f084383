"""The HTTP API: ingest, users, health, metrics and unsubscribe pages."""

"""Typed keys for values stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from segflowd.services import Services

SERVICES = web.AppKey("services", Services)

from segflowd.ingest import Ingest  # noqa: E402 - after SERVICES, which ingest does not need

INGEST = web.AppKey("ingest", Ingest)

"""Typed keys for values stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from segflowd.services import Services

SERVICES = web.AppKey("services", Services)

"""Import a campaign's flow from its `module:function` config value."""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from segflowd.config import CampaignConfig, Config

Flow = Callable[[Any, Any], Any]


class FlowLoadError(Exception):
    """A campaign's flow cannot be used; the message names the campaign and the config key."""


def _where(config: Config, campaign: CampaignConfig) -> str:
    return f"{config.path}: campaigns.{campaign.name}.flow"


def _import_failure(module_name: str, exc: BaseException) -> str:
    """Describe an exception raised while importing a flow module, with its file and line."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}: SyntaxError: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    # The last frame inside user code is the useful one; importlib's own frames say nothing.
    user_frames = [frame for frame in frames if "importlib" not in frame.filename]
    at = f"{user_frames[-1].filename}, line {user_frames[-1].lineno}: " if user_frames else ""
    return f"importing {module_name} failed: {at}{type(exc).__name__}: {exc}"


def ensure_import_path(config: Config) -> None:
    """Put the config file's folder on sys.path, as the config loader does, so flows import."""
    root = str(config.root)
    if root not in sys.path:
        sys.path.insert(0, root)


def load_flow(config: Config, campaign: CampaignConfig) -> Flow:
    """Import `campaign.flow` and check that it is a generator function taking (user, rt).

    Raises FlowLoadError naming the campaign, the config key path and the fix.
    """
    where = _where(config, campaign)
    module_name, _, function_name = campaign.flow.partition(":")
    ensure_import_path(config)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            relative = Path(*module_name.split(".")).with_suffix(".py")
            raise FlowLoadError(
                f"{where}: module {module_name!r} not found; create {config.root / relative} "
                f"or fix the module name in {campaign.flow!r}"
            ) from None
        raise FlowLoadError(f"{where}: {_import_failure(module_name, exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any error in user code at import time is reported
        raise FlowLoadError(f"{where}: {_import_failure(module_name, exc)}") from None

    function = getattr(module, function_name, None)
    if function is None:
        defined = sorted(
            name for name, value in vars(module).items()
            if inspect.isgeneratorfunction(value) and not name.startswith("_")
        )
        raise FlowLoadError(
            f"{where}: module {module_name!r} has no function {function_name!r}; "
            f"generator functions defined there: {', '.join(defined) or 'none'}"
        )
    return check_flow_function(where, campaign.flow, function)


def check_flow_function(where: str, spec: str, function: Any) -> Flow:
    """Return `function` if it is a generator function callable as f(user, rt), else raise FlowLoadError."""
    if inspect.isasyncgenfunction(function) or inspect.iscoroutinefunction(function):
        raise FlowLoadError(
            f"{where}: {spec} is an async function; a flow is a plain `def` generator that yields rt steps"
        )
    if not callable(function) or not inspect.isgeneratorfunction(function):
        kind = "function" if inspect.isfunction(function) else type(function).__name__
        raise FlowLoadError(
            f"{where}: {spec} is a {kind} but not a generator function; "
            "a flow must `yield` its steps, as in `yield rt.send_email(\"welcome\")`"
        )
    try:
        inspect.signature(function).bind(object(), object())
    except TypeError:
        raise FlowLoadError(
            f"{where}: {spec} takes parameters {inspect.signature(function)}; "
            "a flow takes exactly two: (user, rt)"
        ) from None
    return function

"""`segflowd check` on campaign flows: each unusable flow is one error naming the campaign."""

import pytest

from segflowd.campaigns.check import check_flows
from segflowd.campaigns.loader import FlowLoadError
from segflowd.cli import main
from flowcases.harness import campaign_config


def _errors(write_config, flow):
    config = campaign_config(write_config, {"welcome": {"segments": ["all-users"], "flow": flow}})
    errors = check_flows(config)
    assert all(error.startswith(f"{config.path}: campaigns.welcome.flow: ") for error in errors)
    return errors


def test_check_flows_accepts_good_flow(write_config):
    assert _errors(write_config, "flowcases.onboarding:onboarding") == []


def test_check_flows_accepts_extra_defaulted_parameter(write_config):
    assert _errors(write_config, "flowcases.unusable:defaults_are_fine") == []


def test_check_flows_missing_module(write_config):
    [error] = _errors(write_config, "flowcases.no_such_module:flow")
    assert "module 'flowcases.no_such_module' not found" in error
    assert "flowcases/no_such_module.py" in error


def test_check_flows_missing_top_package(write_config):
    [error] = _errors(write_config, "nosuchpackage_xyz.flows:flow")
    assert "module 'nosuchpackage_xyz.flows' not found" in error


def test_check_flows_missing_function(write_config):
    [error] = _errors(write_config, "flowcases.onboarding:onbording")
    assert "has no function 'onbording'" in error
    assert "defined there: onboarding" in error


def test_check_flows_not_a_generator(write_config):
    [error] = _errors(write_config, "flowcases.unusable:not_a_generator")
    assert "not a generator function" in error
    assert "yield" in error


def test_check_flows_not_callable(write_config):
    [error] = _errors(write_config, "flowcases.unusable:NOT_CALLABLE")
    assert "is a int but not a generator function" in error


def test_check_flows_async_generator(write_config):
    [error] = _errors(write_config, "flowcases.unusable:async_flow")
    assert "is an async function" in error


@pytest.mark.parametrize("function", ["one_parameter", "three_parameters"])
def test_check_flows_wrong_parameters(write_config, function):
    [error] = _errors(write_config, f"flowcases.unusable:{function}")
    assert "a flow takes exactly two: (user, rt)" in error


def test_check_flows_dependency_missing_inside_module(write_config):
    [error] = _errors(write_config, "flowcases.broken_import:flow")
    assert "importing flowcases.broken_import failed" in error
    assert "No module named 'segflowd_no_such_dependency'" in error
    assert "broken_import.py, line 3" in error


def test_check_flows_module_raises_on_import(write_config):
    [error] = _errors(write_config, "flowcases.raises_on_import:flow")
    assert "KeyError: 'enterprise'" in error
    assert "raises_on_import.py, line 4" in error


def test_check_flows_syntax_error(write_config, tmp_path):
    config = campaign_config(
        write_config, {"broken": {"segments": ["all-users"], "flow": "syntaxflows_check.onboarding:flow"}}
    )
    package = tmp_path / "syntaxflows_check"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "onboarding.py").write_text("def flow(user, rt):\n    yield rt.send_email('welcome'\n")
    [error] = check_flows(config)
    assert error.startswith(f"{config.path}: campaigns.broken.flow: ")
    assert "onboarding.py, line 2: SyntaxError" in error


def test_check_flows_reports_every_campaign(write_config):
    config = campaign_config(
        write_config,
        {
            "good": {"segments": ["all-users"], "flow": "flowcases.onboarding:onboarding"},
            "bad-one": {"segments": ["all-users"], "flow": "flowcases.unusable:not_a_generator"},
            "bad-two": {"segments": ["all-users"], "flow": "flowcases.onboarding:nothing"},
        },
    )
    errors = check_flows(config)
    assert len(errors) == 2
    assert "campaigns.bad-one.flow" in errors[0]
    assert "campaigns.bad-two.flow" in errors[1]


def test_check_flows_imports_from_config_folder(write_config, tmp_path):
    """The config's folder is on sys.path, so a user's flows/ package imports."""
    config = campaign_config(write_config, {"local": {"segments": ["all-users"], "flow": "localflows_check.welcome:flow"}})
    (tmp_path / "localflows_check").mkdir()
    (tmp_path / "localflows_check" / "__init__.py").write_text("")
    (tmp_path / "localflows_check" / "welcome.py").write_text("def flow(user, rt):\n    yield rt.send_email('welcome')\n")
    assert check_flows(config) == []


def test_engine_load_flows_raises_every_error(write_config, db):
    from segflowd.campaigns.engine import CampaignEngine
    from segflowd.clock import FakeClock
    from flowcases.harness import START, RecordingMessages, RuleSegments

    config = campaign_config(
        write_config,
        {
            "a": {"segments": ["all-users"], "flow": "flowcases.unusable:one_parameter"},
            "b": {"segments": ["all-users"], "flow": "flowcases.nothing_here:flow"},
        },
    )
    clock = FakeClock(START)
    engine = CampaignEngine(config, db, clock, RuleSegments(clock), RecordingMessages())
    with pytest.raises(FlowLoadError) as caught:
        engine.load_flows()
    assert "campaigns.a.flow" in str(caught.value)
    assert "campaigns.b.flow" in str(caught.value)


def test_check_command_lists_flow_errors(write_config, capsys):
    config = campaign_config(write_config, {"welcome": {"segments": ["all-users"], "flow": "flowcases.unusable:one_parameter"}})
    assert main(["check", "--offline", "--config", str(config.path)]) == 1
    assert "campaigns.welcome.flow" in capsys.readouterr().err

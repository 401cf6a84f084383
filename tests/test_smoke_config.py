from segflowd.config import load_config


def test_minimal_config_loads(write_config):
    config = load_config(write_config())
    assert config.http.api_keys == ("test-key",)
    assert config.email.provider == "outbox"

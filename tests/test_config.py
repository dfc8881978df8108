"""Settings: precedence env > file > defaults, env names, every error path, secrets, redaction, generated docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from appliance.config import ConfigError, LoadedSettings, Settings, load_settings, redacted_dump
from appliance.localredis import LocalRedis
from appliance.secrets import SecretError, read_secret

REPO = Path(__file__).resolve().parents[1]

FILE_CONTENT = {
    "redis": {"url": "redis://file-host:6379/0", "queue": "from-file"},
    "health": {"port": 9999},
    "machine": {"tags": ["a", "b"], "type": "gpu"},
    "pools": {"heavy": {"max_machines": 4}},
}


def write_config(tmp_path: Path, suffix: str, data: dict[str, object] = FILE_CONTENT) -> Path:
    path = tmp_path / f"appliance{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(to_toml(data))
    return path


def to_toml(data: dict[str, object], prefix: str = "") -> str:
    """Enough TOML for these tests: scalars, string lists and nested tables."""
    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append(to_toml(value, f"{prefix}{key}."))
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    head = f"[{prefix[:-1]}]\n" if prefix and scalars else ""
    return head + "".join(f"{line}\n" for line in scalars) + "".join(tables)


def errors_of(config: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config, env=env or {})
    assert info.value.errors and str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# --- precedence ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml", ".json"])
def test_env_beats_file_beats_default(tmp_path: Path, suffix: str) -> None:
    path = write_config(tmp_path, suffix)
    loaded = load_settings(path, env={"APPLIANCE_HEALTH_PORT": "7001"})
    s = loaded.settings
    assert s.health.port == 7001 and loaded.sources["health.port"] == "env:APPLIANCE_HEALTH_PORT"
    assert s.redis.url == "redis://file-host:6379/0" and loaded.sources["redis.url"] == f"file:{path}"
    assert s.redis.queue == "from-file"
    assert s.machine.tags == ["a", "b"] and s.machine.type == "gpu"
    assert s.comfyui.base_port == 8188 and loaded.sources["comfyui.base_port"] == "default"
    # a table entry from the file merges into the default entries instead of replacing the table
    assert set(s.pools) == {"fast", "standard", "heavy"}
    assert s.pools["heavy"].max_machines == 4 and s.pools["heavy"].target_drain_s == 1800
    assert loaded.sources["pools.heavy.max_machines"] == f"file:{path}"
    assert loaded.sources["pools.heavy.target_drain_s"] == "default"


def test_defaults_without_file_or_env() -> None:
    loaded = load_settings(None, env={})
    assert loaded.config_path is None
    assert loaded.settings.redis.url == "redis://127.0.0.1:6379/0"
    assert loaded.settings.health.port == 9090 and loaded.settings.health.host == "0.0.0.0"
    assert loaded.settings.machine.id  # the host name
    assert set(loaded.sources.values()) == {"default"}


def test_config_path_from_appliance_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, ".toml")
    loaded = load_settings(env={"APPLIANCE_CONFIG": str(path)})
    assert loaded.config_path == path and loaded.settings.health.port == 9999
    # an explicit argument wins over $APPLIANCE_CONFIG
    other = write_config(tmp_path, ".json", {"health": {"port": 1234}})
    assert load_settings(other, env={"APPLIANCE_CONFIG": str(path)}).settings.health.port == 1234


def test_env_names_canonical_short_and_aliases(tmp_path: Path) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text("sk-test\n")
    env = {
        "APPLIANCE_REDIS_URL": "redis://short:1/0",
        "APPLIANCE_MACHINE_TYPE": "gpu",
        "APPLIANCE_MACHINE_ID": "m1",
        "APPLIANCE_HEALTH_PORT": "9100",
        "APPLIANCE_OPENAI_API_KEY_FILE": str(key_file),
        "APPLIANCE_CONNECTORS__ECHO__SLOTS": "3",
        "APPLIANCE_REPLICATE_ENABLED": "true",
        "APPLIANCE_LOG_LEVEL": "DEBUG",
        "APPLIANCE_QUEUE__LEASE_MS": "45000",
        "APPLIANCE_WORKER__CAPABILITIES__MODELS": '{"comfyui": ["sdxl"]}',
        "APPLIANCE_MACHINE_TAGS": '["x"]',
        "APPLIANCE_MACHINE_REGION": "",
        "APPLIANCE_STORAGE__S3": '{"bucket": "out", "prefix": "jobs/"}',
        "APPLIANCE_POOLS__GPU_XL__TARGET_DRAIN_S": "120",
        "APPLIANCE_CONFIG": "",
        "UNRELATED": "ignored",
    }
    loaded = load_settings(env=env)
    s = loaded.settings
    assert s.redis.url == "redis://short:1/0" and s.machine.type == "gpu" and s.machine.id == "m1"
    assert s.health.port == 9100 and s.logging.level == "DEBUG" and s.queue.lease_ms == 45000
    assert s.connectors["openai"].api_key_file == key_file
    assert loaded.sources["connectors.openai.api_key_file"] == "env:APPLIANCE_OPENAI_API_KEY_FILE"
    assert s.connectors["echo"].slots == 3 and s.connectors["replicate"].enabled
    assert s.worker.capabilities.models == {"comfyui": ["sdxl"]}
    assert s.machine.tags == ["x"] and s.machine.region is None
    assert s.storage.s3.bucket == "out" and loaded.sources["storage.s3.prefix"] == "env:APPLIANCE_STORAGE__S3"
    assert s.pools["gpu_xl"].target_drain_s == 120
    assert set(s.enabled_connectors()) == {"replicate"}


# --- errors -------------------------------------------------------------------------------------------------


def test_bad_type_in_env_names_key_variable_and_expectation() -> None:
    (line,) = errors_of(env={"APPLIANCE_HEALTH_PORT": "ninety"})
    assert line.startswith("health.port:") and "env:APPLIANCE_HEALTH_PORT" in line
    assert "valid integer" in line and "'ninety'" in line


def test_bad_type_in_file_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, ".yaml", {"machine": {"status_interval_s": "often"}})
    (line,) = errors_of(path)
    assert line.startswith("machine.status_interval_s:") and f"file:{path}" in line and "valid number" in line


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, ".toml", {"health": {"port": 70000}, "comfyui": {"base_port": "x"}})
    errors = errors_of(path)
    assert [e.split(":")[0] for e in errors] == ["health.port", "comfyui.base_port"]
    assert "less than or equal to 65535" in errors[0]


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_unknown_key_in_file(tmp_path: Path, suffix: str) -> None:
    path = write_config(tmp_path, suffix, {"redis": {"urll": "redis://x"}, "nosuchsection": {"a": 1}})
    errors = errors_of(path)
    assert f"redis.urll: unknown setting (from file:{path})" in errors
    assert f"nosuchsection: unknown setting (from file:{path})" in errors


def test_unknown_appliance_variable_is_a_warning_with_a_suggestion() -> None:
    def warnings_of(env: dict[str, str]) -> list[str]:
        return load_settings(None, env=env).warnings

    (line,) = warnings_of({"APPLIANCE_REDIS_URLL": "redis://x"})
    assert (
        line
        == "APPLIANCE_REDIS_URLL: not a setting, ignored (environment); did you mean APPLIANCE_REDIS_URL?"
    )
    (line,) = warnings_of({"APPLIANCE_REDIS__NOPE": "1"})
    assert line.startswith("APPLIANCE_REDIS__NOPE: not a setting")
    (line,) = warnings_of({"APPLIANCE_HEALTH__PORT__X": "1"})
    assert line.startswith("APPLIANCE_HEALTH__PORT__X: not a setting")
    # The project's tooling variables are neither settings nor typos.
    tooling = {"APPLIANCE_PIP_AUDIT": "1", "APPLIANCE_SKIP_NSPAWN": "1", "APPLIANCE_TEST_CACHE": "/x"}
    assert warnings_of({**tooling, "APPLIANCE_NIXPKGS_LIB": "/y"}) == []


def test_a_variable_that_is_no_setting_never_stops_a_process(tmp_path: Path) -> None:
    result = run_cli("config", "show", env={"APPLIANCE_BOGUS": "1", "APPLIANCE_PIP_AUDIT": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "WARNING appliance.config: APPLIANCE_BOGUS: not a setting, ignored (environment)"
    ]


def test_conflicting_env_spellings() -> None:
    (line,) = errors_of(env={"APPLIANCE_REDIS_URL": "redis://a", "APPLIANCE_REDIS__URL": "redis://b"})
    assert "APPLIANCE_REDIS__URL" in line and "APPLIANCE_REDIS_URL" in line and "redis.url" in line
    # the same value twice is fine
    assert load_settings(env={"APPLIANCE_REDIS_URL": "redis://a", "APPLIANCE_REDIS__URL": "redis://a"})


def test_invalid_json_in_env() -> None:
    (line,) = errors_of(env={"APPLIANCE_MACHINE_TAGS": '["a",'})
    assert line.startswith("APPLIANCE_MACHINE_TAGS: not valid JSON")
    (line,) = errors_of(env={"APPLIANCE_MACHINE_TAGS": "a,b"})
    assert line.startswith("machine.tags:") and "are JSON" in line and "env:APPLIANCE_MACHINE_TAGS" in line


def test_missing_and_unsupported_config_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert errors_of(missing) == [f"config file {missing} does not exist (from --config)"]
    assert errors_of(env={"APPLIANCE_CONFIG": str(missing)}) == [
        f"config file {missing} does not exist (from APPLIANCE_CONFIG)"
    ]
    ini = tmp_path / "x.ini"
    ini.write_text("[redis]\n")
    (line,) = errors_of(ini)
    assert "unsupported type '.ini'" in line


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".toml", "[redis\nurl = 1\n", "invalid TOML"),
        (".yaml", "redis:\n  url: [1,\n", "invalid YAML"),
        (".json", '{"redis": ', "invalid JSON"),
        (".json", "[1, 2]", "top level must be a table"),
    ],
)
def test_syntax_errors_name_the_file(tmp_path: Path, suffix: str, text: str, expected: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    (line,) = errors_of(path)
    assert str(path) in line and expected in line
    if expected.startswith("invalid"):
        assert "line" in line  # where in the file


def test_invalid_enum_values(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        ".toml",
        {"machine": {"type": "cpu"}, "queue": {"events": "kafka"}, "storage": {"backend": "ftp"}},
    )
    errors = errors_of(path)
    assert any(e.startswith("machine.type:") and "'gpu' or 'api'" in e and str(path) in e for e in errors)
    assert any(e.startswith("queue.events:") and "'stream+pubsub'" in e for e in errors)
    assert any(e.startswith("storage.backend:") for e in errors)
    (line,) = errors_of(env={"APPLIANCE_LOG_LEVEL": "LOUD"})
    assert line.startswith("logging.level:") and "env:APPLIANCE_LOG_LEVEL" in line


def test_cross_references(tmp_path: Path) -> None:
    (line,) = errors_of(env={"APPLIANCE_MACHINE_POOL": "gpu-xl"})
    assert (
        line.startswith("machine.pool: pool 'gpu-xl' is not defined") and "env:APPLIANCE_MACHINE_POOL" in line
    )
    (line,) = errors_of(env={"APPLIANCE_CONNECTORS__OPENIA__ENABLED": "true"})
    assert line.startswith("connectors: unknown connector 'openia'")
    assert "env:APPLIANCE_CONNECTORS__OPENIA__ENABLED" in line
    (line,) = errors_of(env={"APPLIANCE_STORAGE_BACKEND": "s3"})
    assert "storage.s3.bucket is not set" in line


def test_unreadable_secret_file_fails_at_load(tmp_path: Path) -> None:
    missing = tmp_path / "missing-password"
    (line,) = errors_of(env={"APPLIANCE_REDIS_PASSWORD_FILE": str(missing)})
    assert line == (
        f"redis.password_file: file {missing} does not exist (from env:APPLIANCE_REDIS_PASSWORD_FILE)"
    )
    (line,) = errors_of(env={"APPLIANCE_OPENAI_API_KEY_FILE": str(tmp_path)})
    assert line.startswith(f"connectors.openai.api_key_file: file {tmp_path} is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_secret_file_without_permission(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    secret.chmod(0)
    (line,) = errors_of(env={"APPLIANCE_MONITOR_TOKEN_FILE": str(secret)})
    assert "permission denied" in line.lower() and "s3cr3t" not in line
    with pytest.raises(SecretError, match="not readable"):
        read_secret("monitor-token", file=secret, env={})


def test_error_never_shows_a_secret_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, ".json", {"connectors": {"openai": {"api_key": 123456789}}})
    (line,) = errors_of(path)
    assert line.startswith("connectors.openai.api_key:") and "123456789" not in line
    (line,) = errors_of(
        env={"APPLIANCE_REDIS_URL": "redis://:pw-in-url@h/0", "APPLIANCE_REDIS_PASSWORD": "x"}
    )
    assert "pw-in-url" not in line and "given both" in line


# --- secrets ------------------------------------------------------------------------------------------------


def test_read_secret_order(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai-api-key").write_text("from-credentials\n")
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert read_secret("openai-api-key", inline=SecretStr("inline"), file=key_file, env=env) == "inline"
    assert read_secret("openai-api-key", file=key_file, env=env) == "from-file"
    assert read_secret("openai-api-key", env=env) == "from-credentials"
    assert read_secret("replicate-api-key", env=env) is None
    assert read_secret("openai-api-key", env={}) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match=f"secret file {empty} is empty"):
        read_secret("x", file=empty, env={})
    with pytest.raises(SecretError, match="does not exist"):
        read_secret("x", file=tmp_path / "gone", env={})


def test_secrets_through_settings(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "replicate-api-key").write_text("r8-cred\n")
    (creds / "redis-password").write_text("cred-pw\n")
    key_file = tmp_path / "openai"
    key_file.write_text("sk-file\n")
    env = {
        "APPLIANCE_OPENAI_API_KEY_FILE": str(key_file),
        "CREDENTIALS_DIRECTORY": str(creds),
        "APPLIANCE_RUNPOD_API_KEY": "rp-inline",
    }
    s = load_settings(env=env).settings
    assert s.connectors["openai"].resolve_api_key("openai", env) == "sk-file"
    assert s.connectors["replicate"].resolve_api_key("replicate", env) == "r8-cred"
    assert s.connectors["runpod"].resolve_api_key("runpod", env) == "rp-inline"
    assert s.connectors["echo"].resolve_api_key("echo", env) is None
    conn = s.redis_connection(env)
    assert conn.password == "cred-pw" and "cred-pw" not in conn.url


def test_password_in_url_is_moved_out(tmp_path: Path) -> None:
    loaded = load_settings(env={"APPLIANCE_REDIS_URL": "redis://alice:p%40ss@127.0.0.1:6390/2"})
    s = loaded.settings
    assert s.redis.url == "redis://alice@127.0.0.1:6390/2"
    assert loaded.sources["redis.password"] == "env:APPLIANCE_REDIS_URL"
    conn = s.redis_connection({})
    assert conn.password == "p@ss" and conn.client_kwargs() == {"password": "p@ss"}
    assert "p@ss" not in repr(s) and "p%40ss" not in repr(s)


def test_connection_authenticates_against_real_redis(private_redis: LocalRedis, tmp_path: Path) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("requirepass", "real-secret")
    admin.close()
    pw_file = tmp_path / "pw"
    pw_file.write_text("real-secret\n")
    s = load_settings(
        env={"APPLIANCE_REDIS_URL": private_redis.url, "APPLIANCE_REDIS_PASSWORD_FILE": str(pw_file)}
    ).settings
    conn = s.redis_connection({})
    client = redis.Redis.from_url(conn.url, **conn.client_kwargs())
    assert client.ping() is True
    client.close()
    unauthenticated = redis.Redis.from_url(conn.url)
    with pytest.raises(redis.AuthenticationError):
        unauthenticated.ping()
    unauthenticated.close()


def test_redacted_dump_hides_secrets() -> None:
    s = Settings.model_validate(
        {
            "redis": {"url": "redis://u:url-secret@h/0"},
            "connectors": {
                "openai": {
                    "api_key": "sk-inline",
                    "extra": {"auth_token": "tok-extra", "model": "m"},
                    "base_url": "https://user:basic-secret@api.example/v1",
                }
            },
            "monitor": {"token": "mon-token"},
            "storage": {"s3": {"secret_access_key": "s3-secret"}},
        }
    )
    text = json.dumps(redacted_dump(s))
    for secret in ("url-secret", "sk-inline", "tok-extra", "basic-secret", "mon-token", "s3-secret"):
        assert secret not in text
    dump = redacted_dump(s)
    assert dump["connectors"]["openai"]["api_key"] == "***"
    assert dump["connectors"]["openai"]["extra"] == {"auth_token": "***", "model": "m"}
    assert dump["connectors"]["openai"]["base_url"] == "https://user:***@api.example/v1"
    assert dump["redis"]["password"] == "***" and dump["redis"]["url"] == "redis://u@h/0"
    assert redacted_dump(Settings())["monitor"]["token"] is None  # unset stays visibly unset


# --- CLI ----------------------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_") and k != "CREDENTIALS_DIRECTORY"
    }
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_config_show_redacts_planted_secrets(tmp_path: Path, as_json: bool) -> None:
    path = write_config(
        tmp_path,
        ".yaml",
        {
            "storage": {"s3": {"secret_access_key": "PLANTED-S3"}},
            "connectors": {"runpod": {"extra": {"api_key": "PLANTED-EXTRA"}}},
        },
    )
    env = {
        "APPLIANCE_REDIS_URL": "redis://:PLANTED-REDIS@127.0.0.1:6379/0",
        "APPLIANCE_OPENAI_API_KEY": "PLANTED-OPENAI",
        "APPLIANCE_MONITOR__TOKEN": "PLANTED-MONITOR",
    }
    result = run_cli("config", "show", "--config", str(path), *(["--json"] if as_json else []), env=env)
    assert result.returncode == 0, result.stderr
    assert "PLANTED" not in result.stdout + result.stderr
    if as_json:
        shown = json.loads(result.stdout)
        assert shown["settings"]["redis"]["password"] == "***"
        assert shown["sources"]["connectors.openai.api_key"] == "env:APPLIANCE_OPENAI_API_KEY"
        assert shown["sources"]["storage.s3.secret_access_key"] == f"file:{path}"
        assert shown["config_file"] == str(path)
    else:
        assert 'redis.password = "***"  # env:APPLIANCE_REDIS_URL' in result.stdout
        assert 'connectors.openai.api_key = "***"  # env:APPLIANCE_OPENAI_API_KEY' in result.stdout
        assert "health.port = 9090  # default" in result.stdout


def test_config_show_reports_errors_without_traceback() -> None:
    result = run_cli("config", "show", env={"APPLIANCE_HEALTH_PORT": "x", "APPLIANCE_BOGUS": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "appliance: error: health.port: Input should be a valid integer, unable to parse string as an integer; "
        "got 'x' (from env:APPLIANCE_HEALTH_PORT)"
    ]


def test_config_check(tmp_path: Path) -> None:
    good = write_config(tmp_path, ".toml")
    result = run_cli("config", "check", str(good), env={"APPLIANCE_HEALTH_PORT": "not-used-without-with-env"})
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    result = run_cli("config", "check", "--with-env", str(good), env={"APPLIANCE_HEALTH_PORT": "x"})
    assert result.returncode == 2 and "env:APPLIANCE_HEALTH_PORT" in result.stderr

    bad = write_config(tmp_path, ".json", {"redis": {"urll": "x"}, "health": {"port": "high"}})
    result = run_cli("config", "check", str(bad), env={})
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("appliance: error: ") for line in lines)
    assert f"redis.urll: unknown setting (from file:{bad})" in lines[0] + lines[1]


def test_config_check_without_opening_files(tmp_path: Path) -> None:
    """The NixOS module checks its rendered settings in the build sandbox, where a configured CA file or key
    file does not exist: --no-open-files judges the settings alone, and still names a bad key."""
    missing = tmp_path / "absent-ca.pem"
    doc = write_config(tmp_path, ".json", {"redis": {"tls_ca_file": str(missing)}})
    result = run_cli("config", "check", str(doc), env={})
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run_cli("config", "check", "--no-open-files", str(doc), env={})
    assert (result.returncode, result.stdout) == (0, "ok\n")
    bad = write_config(tmp_path, ".json", {"bogus": 1})
    result = run_cli("config", "check", "--no-open-files", str(bad), env={})
    assert result.returncode == 2 and f"bogus: unknown setting (from file:{bad})" in result.stderr


# --- generated reference ------------------------------------------------------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    from appliance.config.doc import render

    doc = REPO / "docs" / "configuration.md"
    assert doc.read_text() == render(), "regenerate: python -m appliance.config.doc > docs/configuration.md"


def test_reference_lists_every_setting_and_env_name() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    loaded: LoadedSettings = load_settings(env={})
    for key in loaded.sources:
        parts = key.split(".")
        if parts[0] in ("connectors", "pools"):
            parts[1] = "<name>"
        assert f"`{'.'.join(parts)}`" in text, key
    for name in (
        "APPLIANCE_REDIS_URL",
        "APPLIANCE_HEALTH_PORT",
        "APPLIANCE_MACHINE_TYPE",
        "APPLIANCE_MACHINE_ID",
        "APPLIANCE_<NAME>_API_KEY_FILE",
        "APPLIANCE_REDIS__PASSWORD_FILE",
    ):
        assert f"`{name}`" in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://host/x", "must be a database number (e.g. /0), not /x"),
        ("redis://host/1/2", "not /1/2"),
        ("rediss://host:6380/db0", "not /db0"),
        ("redis://host/?db=one", "db=one in the Redis URL is not a database number"),
    ],
)
def test_redis_url_names_no_database_number(url: str, expected: str) -> None:
    # redis-py would silently use db 0 (or db 12 for /1/2): another database's keys.
    (line,) = errors_of(env={"APPLIANCE_REDIS_URL": url})
    assert line.startswith("redis.url: ") and expected in line and "\n" not in line


@pytest.mark.parametrize(
    "url", ["redis://host", "redis://host/", "redis://host:6379/15", "unix:///run/r.sock?db=2"]
)
def test_redis_url_database_numbers_accepted(url: str) -> None:
    assert load_settings(None, env={"APPLIANCE_REDIS_URL": url}).settings.redis.url == url


@pytest.mark.parametrize(("lease", "beat"), [("1000", "5000"), ("10000", "5000"), ("30000", "30000")])
def test_heartbeat_at_or_above_half_the_lease_is_refused(lease: str, beat: str) -> None:
    # lease_ms=1000 with heartbeat_interval_ms=5000 let a healthy worker's lease expire between beats.
    env = {"APPLIANCE_QUEUE__LEASE_MS": lease, "APPLIANCE_QUEUE__HEARTBEAT_INTERVAL_MS": beat}
    (line,) = errors_of(env=env)
    assert line.startswith("queue.heartbeat_interval_ms: ") and f"half of queue.lease_ms ({lease} ms)" in line
    env["APPLIANCE_QUEUE__HEARTBEAT_INTERVAL_MS"] = str(int(lease) // 2 - 1)
    assert load_settings(None, env=env).settings.queue.heartbeat_interval_ms == int(lease) // 2 - 1


@pytest.mark.parametrize("machine_id", ["m|1", 'm"1', "m1\nINFO forged line", "-m1", "m 1", "m" * 97, "m/1"])
def test_machine_ids_are_validated_like_job_ids(machine_id: str) -> None:
    # A '|' broke the lease owner field, a '"' the error history JSON, a newline forged log lines.
    (line,) = errors_of(env={"APPLIANCE_MACHINE_ID": machine_id})
    assert line.startswith("machine.id: not a valid machine id") and "\n" not in line


@pytest.mark.parametrize("machine_id", ["m1", "gpu-box.example.com", "rack:3_node-7", "m" * 96])
def test_ordinary_machine_ids_are_accepted(machine_id: str) -> None:
    assert load_settings(None, env={"APPLIANCE_MACHINE_ID": machine_id}).settings.machine.id == machine_id


async def test_a_worker_session_refuses_an_unsafe_worker_id(redis_url: str) -> None:
    from appliance.queue import Capabilities, Queue, WorkerSession

    q = await Queue.connect(redis_url)
    try:
        with pytest.raises(ValueError, match="not a valid id"):
            await WorkerSession.open(q, "m|1-echo0", Capabilities(services=["echo"]))
    finally:
        await q.close()


def test_test_tooling_variables_are_not_settings() -> None:
    """APPLIANCE_NIXPKGS_LIB points tests/test_nix.py at a nixpkgs lib checkout for a whole test run; every
    appliance process the suite starts inherits it and must not refuse it as an unknown setting."""
    from appliance.config import load_settings

    load_settings(None, env={"APPLIANCE_NIXPKGS_LIB": "/work/nixpkgs-lib", "APPLIANCE_TEST_HOOKS": "1"})

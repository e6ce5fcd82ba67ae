"""Loading, environment overrides and validation of the worker configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import Config, ConfigError, check_storage_writable, env_var, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "roomserver.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, {})
    assert config.storage.path == "./data"
    assert config.nats.servers == ()
    assert config.nats.embedded
    assert (config.nats.listen_host, config.nats.listen_port) == ("127.0.0.1", 4222)
    assert config.streams.subject_prefix == "roomserver"
    assert config.streams.input == "ROOMSERVER_INPUT"
    assert config.streams.output == "ROOMSERVER_OUTPUT"
    assert config.streams.deadletter == "ROOMSERVER_DEADLETTER"
    assert config.streams.storage == "file"
    assert config.streams.retention == "limits"
    assert config.streams.max_age == 0
    assert config.streams.duplicate_window == 120
    assert config.consumer.durable == "roomserver"
    assert config.consumer.filter_subject == "roomserver.input.>"
    assert config.consumer.batch_size == 256
    assert config.log.level == "info"
    assert config.log.format == "console"


def test_shipped_config_file_loads_with_the_defaults() -> None:
    assert load_config(REPO / "config" / "roomserver.toml", {}) == load_config(None, {})


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [storage]
        path = "/var/lib/roomserver"
        [nats]
        servers = ["nats://a:4222", "b:4223"]
        user = "worker"
        password = "secret"
        [streams]
        subject_prefix = "rs.test"
        storage = "memory"
        retention = "workqueue"
        max_age = 86400
        replicas = 3
        duplicate_window = 30.5
        [consumer]
        batch_size = 10
        max_ack_pending = 10
        [log]
        level = "DEBUG"
        format = "json"
        """,
    )
    config = load_config(path, {})
    assert config.storage.path == "/var/lib/roomserver"
    assert config.nats.servers == ("nats://a:4222", "nats://b:4223")
    assert not config.nats.embedded
    assert (config.nats.user, config.nats.password) == ("worker", "secret")
    assert config.streams.subject_prefix == "rs.test"
    assert config.streams.storage == "memory"
    assert config.streams.retention == "workqueue"
    assert config.streams.max_age == 86400.0
    assert config.streams.replicas == 3
    assert config.streams.duplicate_window == 30.5
    assert config.consumer.filter_subject == "rs.test.input.>"
    assert config.consumer.batch_size == 10
    assert config.log.level == "debug"
    assert config.log.format == "json"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[streams]\nsubject_prefix = "from_file"\nreplicas = 3\n')
    env = {
        "ROOMSERVER_STREAMS_SUBJECT_PREFIX": "from_env",
        "ROOMSERVER_NATS_SERVERS": "nats://a:1, nats://b:2,,",
        "ROOMSERVER_NATS_TOKEN": "t0k",
        "ROOMSERVER_STREAMS_MAX_AGE": "3600",
        "ROOMSERVER_CONSUMER_FETCH_TIMEOUT": "0.25",
        "ROOMSERVER_CONSUMER_BATCH_SIZE": "64",
        "ROOMSERVER_CONSUMER_FILTER_SUBJECT": "from_env.input.abc",
        "ROOMSERVER_CONFIG": "/elsewhere.toml",  # not a section: left to the CLI
        "PATH": "/bin",
    }
    config = load_config(path, env)
    assert config.streams.subject_prefix == "from_env"
    assert config.streams.replicas == 3
    assert config.nats.servers == ("nats://a:1", "nats://b:2")
    assert config.nats.token == "t0k"
    assert config.streams.max_age == 3600.0
    assert config.consumer.fetch_timeout == 0.25
    assert config.consumer.batch_size == 64
    assert config.consumer.filter_subject == "from_env.input.abc"


def test_empty_environment_value_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[nats]\nservers = ["a:1"]\ntoken = "x"\n')
    assert load_config(path, {"ROOMSERVER_NATS_TOKEN": ""}).nats.token is None


def test_env_var_names() -> None:
    assert env_var("streams", "max_age") == "ROOMSERVER_STREAMS_MAX_AGE"
    assert env_var("nats", "tls_ca") == "ROOMSERVER_NATS_TLS_CA"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.storage.path = "x"  # type: ignore[misc]


def test_files_must_exist(tmp_path: Path) -> None:
    creds = tmp_path / "worker.creds"
    env = {"ROOMSERVER_NATS_SERVERS": "nats://a:1", "ROOMSERVER_NATS_CREDENTIALS": str(creds)}
    with pytest.raises(ConfigError, match=r"nats\.credentials .*does not exist"):
        load_config(None, env)
    creds.write_text("creds")
    assert load_config(None, env).nats.credentials == str(creds)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[bogus]\nx = 1\n", {}, r"unknown section \[bogus\]"),
        ("[streams]\nreplica = 1\n", {}, r"unknown key streams\.replica"),
        ("storage = 1\n", {}, r"storage must be a table"),
        ("[streams\n", {}, r"not valid TOML"),
        ("", {"ROOMSERVER_STREAMS_REPLICA": "1"}, r"ROOMSERVER_STREAMS_REPLICA: unknown key"),
        ("", {"ROOMSERVER_STREAMS_REPLICAS": "two"}, r"REPLICAS must be an integer"),
        ("", {"ROOMSERVER_STREAMS_MAX_AGE": "1h"}, r"MAX_AGE must be a number"),
        ("[streams]\nreplicas = '1'\n", {}, r"streams\.replicas \(from .*\) must be an integer"),
        ("[streams]\nreplicas = true\n", {}, r"must be an integer"),
        ("[streams]\nmax_age = '1'\n", {}, r"must be a number of seconds"),
        ("[nats]\nservers = 'a:1'\nuser = 1\n", {}, r"nats\.user .* must be a string"),
        ("[nats]\nservers = [1]\n", {}, r"must be a list of strings"),
        ("[streams]\nstorage = 'disk'\n", {}, r"streams\.storage .*one of 'file', 'memory'"),
        ("", {"ROOMSERVER_STREAMS_RETENTION": "forever"}, r"from environment .*RETENTION"),
        ("[streams]\nreplicas = 0\n", {}, r"streams\.replicas .*1 to 5"),
        ("[streams]\nmax_age = -1\n", {}, r"streams\.max_age .*at least 0"),
        ("[streams]\nmax_age = 60\n", {}, r"duplicate_window .*must not exceed streams\.max_age"),
        ("[streams]\nsubject_prefix = 'a..b'\n", {}, r"subject_prefix"),
        ("[streams]\nsubject_prefix = 'a.*'\n", {}, r"subject_prefix"),
        ("[streams]\ninput = 'IN.PUT'\n", {}, r"streams\.input .*non-empty name"),
        ("[streams]\noutput = 'ROOMSERVER_INPUT'\n", {}, r"distinct names"),
        ("[consumer]\ndurable = ''\n", {}, r"consumer\.durable"),
        ("[consumer]\nfilter_subject = 'other.>'\n", {}, r"under roomserver\.input\.>"),
        ("[consumer]\nfilter_subject = 'roomserver.input.>.x'\n", {}, r"filter_subject"),
        ("[consumer]\nfilter_subject = 'roomserver.input.'\n", {}, r"filter_subject"),
        ("[consumer]\nbatch_size = 0\n", {}, r"batch_size .*at least 1"),
        ("[consumer]\nbatch_size = 2000\n", {}, r"max_ack_pending .*at least consumer\.batch_size"),
        ("[consumer]\nfetch_timeout = 0\n", {}, r"fetch_timeout .*positive"),
        ("[consumer]\nack_wait = 0\n", {}, r"ack_wait .*positive"),
        ("[consumer]\nmax_deliver = 1\n", {}, r"max_deliver"),
        ("[consumer]\nbatch_patience = 0\n", {}, r"batch_patience .*positive"),
        ("[log]\nlevel = 'loud'\n", {}, r"log\.level"),
        ("[log]\nformat = 'xml'\n", {}, r"log\.format"),
        ("[nats]\nservers = ['http://a:1']\n", {}, r"must use one of the schemes"),
        ("[nats]\nservers = ['nats://a:x']\n", {}, r"invalid port"),
        ("[nats]\nservers = ['']\n", {}, r"not a server address"),
        ("[nats]\nlisten_port = 70000\n", {}, r"listen_port"),
        ("[nats]\nuser = 'u'\n", {}, r"user and nats\.password must be given together"),
        ("[nats]\nuser = 'u'\npassword = 'p'\ntoken = 't'\n", {}, r"either nats\.token"),
        ("[nats]\ntls_ca = '/x'\n", {}, r"nats\.tls_ca .*needs nats\.servers"),
        ("[nats]\nservers = ['a:1']\ntls_cert = '/x'\n", {}, r"tls_cert and nats\.tls_key"),
        ("[storage]\npath = ''\n", {}, r"storage\.path"),
        ("[nats]\nping_interval = 0\n", {}, r"nats\.ping_interval .*at least 1"),
        ("[nats]\nmax_outstanding_pings = 0\n", {}, r"max_outstanding_pings .*at least 1"),
        ("[nats]\nready_grace = 0\n", {}, r"nats\.ready_grace .*positive"),
    ],
)
def test_validation_errors(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})


def test_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[streams]\nretention = 'forever'\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, {})


def test_keep_alive_and_readiness_defaults() -> None:
    nats = load_config(None, {}).nats
    assert (nats.ping_interval, nats.max_outstanding_pings, nats.ready_grace) == (2, 2, 5.0)
    env = {"ROOMSERVER_NATS_PING_INTERVAL": "5", "ROOMSERVER_NATS_READY_GRACE": "0.5"}
    nats = load_config(None, env).nats
    assert (nats.ping_interval, nats.ready_grace) == (5, 0.5)


def test_storage_writable_check(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "b"
    check_storage_writable(fresh)
    assert fresh.is_dir() and list(fresh.iterdir()) == []  # the probe file is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^storage\.path .*/file is not a directory$"):
        check_storage_writable(tmp_path / "file")
    with pytest.raises(ConfigError, match=r"/file/sub is not writable \(Not a directory\)$"):
        check_storage_writable(tmp_path / "file" / "sub")


def test_a_directory_is_not_a_credentials_file(tmp_path: Path) -> None:
    env = {"ROOMSERVER_NATS_SERVERS": "nats://a:1", "ROOMSERVER_NATS_CREDENTIALS": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"nats\.credentials .*is not a file"):
        load_config(None, env)

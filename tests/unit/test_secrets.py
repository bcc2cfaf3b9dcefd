"""Credentials in storage options stay secret: masked in every dump, revealed only to the filesystem."""

import json
import logging
import pickle

from pydantic import SecretStr

from react_cli.main import main
from react_core import secrets
from react_core.config import ReactConfig, StorageConfig
from react_core.config_loading import load_config
from react_core.storage import Storage
from react_core.training.trainer import TrainJob

SECRET = "s3cr3t-value-0f-a-test"


def _cfg() -> StorageConfig:
    return StorageConfig(
        root="s3://bucket/react",
        options={"endpoint_url": "http://127.0.0.1:9", "key": "AKIAEXAMPLE", "secret": SECRET,
                 "client_kwargs": {"aws_session_token": "tok-" + SECRET, "region_name": "eu-west-1"}},
    )  # fmt: skip


def test_credential_options_are_secret_in_every_dump():
    cfg = _cfg()
    assert isinstance(cfg.options["secret"], SecretStr) and isinstance(cfg.options["key"], SecretStr)
    assert cfg.options["endpoint_url"] == "http://127.0.0.1:9"  # not a credential: kept readable
    assert cfg.options["client_kwargs"]["region_name"] == "eu-west-1"
    full = ReactConfig(storage=cfg)
    for text in (full.model_dump_json(), json.dumps(full.model_dump(mode="json")), repr(full), str(full)):
        assert SECRET not in text and "AKIAEXAMPLE" not in text and secrets.MASK in text


def test_config_show_prints_the_mask(capsys):
    assert main(["config", "show", "-s", f"storage.options={{key: AKIAEXAMPLE, secret: {SECRET}}}"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "AKIAEXAMPLE" not in out and "secret: '**********'" in out


def test_the_filesystem_gets_the_real_values_and_a_storage_never_prints_them():
    st = Storage("memory://secret-test", _cfg().options)
    assert secrets.reveal(st.options)["secret"] == SECRET
    assert secrets.reveal(st.options)["client_kwargs"]["aws_session_token"] == "tok-" + SECRET
    assert SECRET not in repr(st)
    assert pickle.loads(pickle.dumps(st)).options["secret"].get_secret_value() == SECRET  # to a Dask worker


def test_a_masked_value_is_dropped_with_a_warning_so_the_environment_credentials_apply(caplog):
    arrived = ReactConfig.model_validate(ReactConfig(storage=_cfg()).model_dump(mode="json"))  # via Prefect's API
    with caplog.at_level(logging.WARNING, logger="react_core.secrets"):
        plain = secrets.reveal(arrived.storage.options)
    assert "secret" not in plain and "key" not in plain and plain["endpoint_url"] == "http://127.0.0.1:9"
    assert "storage.options.secret arrived redacted" in caplog.text and "AWS_ACCESS_KEY_ID" in caplog.text


def test_job_file_holds_no_credentials():
    job = TrainJob("m", None, {}, "s3://bucket/react", dict(_cfg().options), [], "f", "s3://bucket/react/train/x")
    text = job.to_json()
    assert SECRET not in text and "AKIAEXAMPLE" not in text
    assert json.loads(text)["storage_options"] == {"endpoint_url": "http://127.0.0.1:9",
                                                   "client_kwargs": {"region_name": "eu-west-1"}}  # fmt: skip


def test_secret_names():
    for name in ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                 "aws_session_token", "account_key", "sas_token", "client_secret", "credentials"):  # fmt: skip
        assert secrets.is_secret_name(name), name
    for name in ("endpoint_url", "region_name", "profile", "anon", "use_ssl", "config_kwargs", "cache_key"):
        assert not secrets.is_secret_name(name), name
    assert secrets.scrub(f"failed with secret={SECRET}", _cfg().options) == "failed with secret=**********"
    assert load_config(None, ["storage.options={token: abc}"]).storage.options["token"].get_secret_value() == "abc"


def test_secrets_of_any_type_in_lists_under_any_usual_name_and_in_urls_are_masked(capsys):
    sets = [
        "storage.options.password=97531864202468",  # YAML reads it as an int
        "storage.options.endpoint_url=http://ops:url-pass-77@127.0.0.1:9000",
        "storage.options.pwd=pwd-value-11",
        "storage.options.extra=[{api_key_value: list-key-22}, {apiKey: camel-33}]",
    ]
    assert main(["config", "show", *(a for s in sets for a in ("-s", s))]) == 0
    out = capsys.readouterr().out
    for needle in ("97531864202468", "url-pass-77", "ops:url", "pwd-value-11", "list-key-22", "camel-33"):
        assert needle not in out, needle
    cfg = load_config(None, sets)
    plain = secrets.reveal(cfg.storage.options)  # the filesystem still gets every value
    assert plain["password"] == "97531864202468" and plain["endpoint_url"] == "http://ops:url-pass-77@127.0.0.1:9000"
    assert plain["extra"] == [{"api_key_value": "list-key-22"}, {"apiKey": "camel-33"}]
    assert set(secrets.secret_values(cfg.storage.options)) >= {"97531864202468", "url-pass-77", "list-key-22"}
    assert secrets.public(cfg.storage.options) == {"extra": [{}, {}]}


def test_a_password_in_a_url_outside_the_storage_options_is_refused_without_echoing_it(capsys):
    rc = main(["config", "show", "-s", "tracking.tracking_uri=http://bob:hunter2@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert rc == 2 and "hunter2" not in err and err.count("\n") == 1
    assert "tracking.tracking_uri holds a URL with a password (http://***@127.0.0.1:5000)" in err
    assert "MLFLOW_TRACKING_PASSWORD" in err
    assert not secrets.is_secret_name("endpoint_url") and not secrets.is_secret_name("region_name")

"""Configuration: one table of variables, documented in docs/configuration.md, checked on read."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from zoomq.config import VARIABLES, Settings, WorkerIdentity, is_set, log_format, settings, worker_identity
from zoomq.errors import InvalidParameter

CONFIGURATION_DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_doc_documents_exactly_the_variables():
    documented = set(re.findall(r"^\| `(ZOOMQ_[A-Z_]+)` \|", CONFIGURATION_DOC.read_text(), flags=re.M))
    assert documented == {v.name for v in VARIABLES}


def test_defaults_and_overrides(monkeypatch, tmp_path):
    for v in VARIABLES:
        monkeypatch.delenv(v.name, raising=False)
    s = settings()
    assert (s.device, s.inference_precision, s.threads) == ("CPU", "auto", 0)
    monkeypatch.setenv("ZOOMQ_THREADS", "2")
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOOMQ_INFERENCE_PRECISION", "BF16")
    s = settings()
    assert s.threads == 2 and s.inference_precision == "bf16"
    assert s.ov_cache_dir == tmp_path / "ov-cache" / "cpu-bf16"
    assert s.compile_cache == "auto"
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "OFF")
    assert settings().compile_cache == "off"
    assert settings().warmup is True
    monkeypatch.setenv("ZOOMQ_WARMUP", "OFF")
    assert settings().warmup is False


@pytest.mark.parametrize("name, value", [("ZOOMQ_THREADS", "-1"), ("ZOOMQ_THREADS", "lots"),
                                         ("ZOOMQ_INFERENCE_PRECISION", "int4"), ("ZOOMQ_COMPILE_CACHE", "yes"),
                                         ("ZOOMQ_WARMUP", "later")])
def test_bad_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidParameter) as e:
        settings()
    assert e.value.param == name and value.lower() in str(e.value).lower()


def test_a_bad_setting_is_named_as_written_not_as_an_option(monkeypatch, capsys):
    from support.cli import run_cli

    monkeypatch.setenv("ZOOMQ_ARTIFACTS", "s3://x")
    code, _, err = run_cli("status", "0f1e2d3c-0000-4000-8000-000000000000", capsys=capsys)
    assert code == 2
    assert err.startswith("zoomq: error: ZOOMQ_ARTIFACTS: bucket name 'x' is not valid") and "--ZOOMQ" not in err


@pytest.fixture
def bare(monkeypatch):
    """No ZOOMQ_* variable set: every one at its default."""
    for name in [n for n in os.environ if n.startswith("ZOOMQ_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_defaults_are_those_of_the_variables_parsed_as_the_environment_is(bare):
    assert Settings.defaults() == settings()
    for v in VARIABLES:  # a default written out in the environment reads as leaving the variable unset
        if v.default:
            bare.setenv(v.name, v.default)
    assert settings() == Settings.defaults()
    assert settings().max_queued == int(next(v.default for v in VARIABLES if v.name == "ZOOMQ_MAX_QUEUED"))


def test_settings_ignore_the_environment_for_their_defaults(bare):
    defaults = Settings.defaults()
    bare.setenv("ZOOMQ_MAX_QUEUED", "7")
    bare.setenv("ZOOMQ_RATE_LIMIT", "0")
    assert Settings.defaults() == defaults
    assert (settings().max_queued, settings().rate_limit) == (7, (0, 0))


def test_no_field_repeats_a_default():
    assert [f.name for f in fields(Settings) if f.default is not MISSING or f.default_factory is not MISSING] == []
    assert [f.name for f in fields(WorkerIdentity) if f.default is not MISSING] == []


def test_every_variable_is_one_field_and_every_field_one_variable():
    read = {f"ZOOMQ_{f.name.upper()}" for f in fields(Settings)} | {
        f"ZOOMQ_WORKER_{f.name.upper()}" for f in fields(WorkerIdentity)}
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert read == set(names)


def test_the_worker_identity_is_read_from_its_variables(bare):
    assert worker_identity() == WorkerIdentity(f"zoomq-{os.getpid()}@{socket.gethostname()}", (), (0, 1))
    bare.setenv("ZOOMQ_WORKER_QUEUES", "a,b")
    assert worker_identity().queues == ("a", "b")
    bare.setenv("ZOOMQ_WORKER_QUEUES", " render.t2i , ,encode ")
    assert worker_identity().queues == ("render.t2i", "encode")
    given = WorkerIdentity("w1@host", ("render.t2i", "split.t2i", "encode"), (3, 1))
    for name, value in given.environment().items():
        bare.setenv(name, value)
    assert worker_identity() == given
    slots = WorkerIdentity("w2@host", ("render.t2i",), (1, 2))
    assert slots.environment()["ZOOMQ_WORKER_CONCURRENCY"] == "1x2"
    for name, value in slots.environment().items():
        bare.setenv(name, value)
    assert worker_identity() == slots


@pytest.mark.parametrize("value", ["many", "-1", "2.5", "1x0", "1x"])
def test_a_bad_worker_concurrency_names_the_variable(bare, value):
    bare.setenv("ZOOMQ_WORKER_CONCURRENCY", value)
    with pytest.raises(InvalidParameter) as e:
        worker_identity()
    assert e.value.param == "ZOOMQ_WORKER_CONCURRENCY" and value in str(e.value) and "whole number" in str(e.value)


def test_is_set_and_the_log_format(bare):
    assert not is_set("ZOOMQ_LOG_FORMAT") and log_format() == "text"
    bare.setenv("ZOOMQ_LOG_FORMAT", "  ")
    assert not is_set("ZOOMQ_LOG_FORMAT") and log_format() == "text"
    bare.setenv("ZOOMQ_LOG_FORMAT", "JSON")
    assert is_set("ZOOMQ_LOG_FORMAT") and log_format() == "json" and settings().log_format == "json"
    bare.setenv("ZOOMQ_LOG_FORMAT", "xml")
    with pytest.raises(InvalidParameter) as e:
        log_format()
    assert e.value.param == "ZOOMQ_LOG_FORMAT" and "xml" in str(e.value) and "text or json" in str(e.value)

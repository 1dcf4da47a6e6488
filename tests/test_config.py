"""Configuration: one table of variables, documented in the README, checked on read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoomq.config import VARIABLES, settings
from zoomq.errors import InvalidParameter

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_documents_exactly_the_variables():
    documented = set(re.findall(r"^\| `(ZOOMQ_[A-Z_]+)` \|", README.read_text(), flags=re.M))
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
    assert s.compile_cache is False  # auto: off on CPU
    monkeypatch.setenv("ZOOMQ_DEVICE", "GPU")
    assert settings().compile_cache is True
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "off")
    assert settings().compile_cache is False
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
    from conftest import run_cli

    monkeypatch.setenv("ZOOMQ_ARTIFACTS", "s3://x")
    code, _, err = run_cli("status", "0f1e2d3c-0000-4000-8000-000000000000", capsys=capsys)
    assert code == 2
    assert err.startswith("zoomq: error: ZOOMQ_ARTIFACTS: bucket name 'x' is not valid") and "--ZOOMQ" not in err

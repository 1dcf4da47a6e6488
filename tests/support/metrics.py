"""``/metrics`` read back as numbers: what the metrics and soak tests compare with the job records."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(client) -> dict[str, dict[tuple, float]]:
    """GET /metrics, parsed: sample name → {sorted label pairs: value}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: dict, name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` keyed by the value of its one label ``label``."""
    return {dict(labels)[label]: value for labels, value in samples[name].items()}

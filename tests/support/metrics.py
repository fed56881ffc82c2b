"""Reading Prometheus text: samples by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.environment import TEST_ENV


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def scrape_headers() -> dict[str, str]:
    """What Prometheus sends: the run's METRICS_TOKEN as a bearer token."""
    return {"Authorization": f"Bearer {TEST_ENV['METRICS_TOKEN']}"}


def scrape(client) -> str:
    response = client.get("/metrics", headers=scrape_headers())
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return response.get_data(as_text=True)

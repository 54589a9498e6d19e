"""Reading a /metrics scrape (the Prometheus text format) in tests."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    """The samples of one scrape, looked up by sample name and some of its labels."""

    def __init__(self, text: str):
        self.samples = [sample for family in text_string_to_metric_families(text)
                        for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(sample.value for sample in self.samples if sample.name == name
                   and all(sample.labels.get(key) == value for key, value in labels.items()))

    def labels(self, name: str, label: str) -> set[str]:
        """The values that ``label`` takes in the samples called ``name``."""
        return {sample.labels[label] for sample in self.samples
                if sample.name == name and label in sample.labels}


def scrape(client, **request) -> Scrape:
    """GET /metrics with Flask's test client (``request``: e.g. auth)."""
    response = client.get("/metrics", **request)
    assert response.status_code == 200, response.get_data(as_text=True)
    return Scrape(response.get_data(as_text=True))

#!/usr/bin/python3
"""Scrapes a rustbridge metrics address with Prometheus' own Python parser.

  scripts/scrape-metrics.py http://127.0.0.1:9474/metrics

Prints one JSON object: {"samples": [{"name", "labels", "value"}...],
"families": {name: type}}. Exits 1 when the answer is not 200, not the text
format 0.0.4, or does not parse (python3-prometheus-client, Debian package).
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as answer:
        if answer.status != 200:
            sys.exit(f"{url}: status {answer.status}")
        content_type = answer.headers.get("Content-Type", "")
        if not content_type.startswith("text/plain") or "version=0.0.4" not in content_type:
            sys.exit(f"{url}: Content-Type {content_type!r} is not the Prometheus text format 0.0.4")
        text = answer.read().decode("utf-8")
    families, samples = {}, []
    try:
        for family in text_string_to_metric_families(text):
            if family.name in families:
                sys.exit(f"{url}: metric family {family.name} declared twice")
            families[family.name] = family.type
            for s in family.samples:
                samples.append({"name": s.name, "labels": s.labels, "value": s.value})
    except ValueError as e:
        sys.exit(f"{url}: does not parse as Prometheus text: {e}")
    untyped = [name for name, kind in families.items() if kind in ("unknown", "untyped")]
    if untyped:
        sys.exit(f"{url}: families without a TYPE: {untyped}")
    json.dump({"families": families, "samples": samples}, sys.stdout)
    print()


if __name__ == "__main__":
    main()

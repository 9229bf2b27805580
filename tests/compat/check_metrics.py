"""Checks chatd's /metrics exposition with the reference Prometheus client's OpenMetrics parser
(strict: HELP/TYPE, counter and histogram shapes, # EOF) and, given a monitoring-kit folder,
that every metric its alert rules and dashboard name exists in the exposition.

usage: check_metrics.py EXPOSITION_FILE [KIT_DIR]
Prints one JSON object: problems (list), samples ({name+labels: value}), referenced (names)."""
import json
import re
import sys

import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families

NAME = re.compile(r"\b((?:chatd|process)_[a-z0-9_]+)")


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    problems = []
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser's verdict is the test's
        print(json.dumps({"problems": [f"exposition does not parse: {e}"], "samples": {}, "referenced": []}))
        return
    samples = {}
    names = set()
    for f in families:
        names.add(f.name)
        if not f.documentation:
            problems.append(f"{f.name}: no HELP")
        if f.type in ("unknown", "untyped"):
            problems.append(f"{f.name}: no TYPE")
        for s in f.samples:
            names.add(s.name)
            samples[s.name + json.dumps(dict(sorted(s.labels.items())))] = s.value
    referenced = {}
    if len(sys.argv) > 2:
        kit = sys.argv[2]
        prom = yaml.safe_load(open(f"{kit}/prometheus.yml", encoding="utf-8"))
        if "alerts.yml" not in prom.get("rule_files", []):
            problems.append("prometheus.yml does not load alerts.yml")
        rules = yaml.safe_load(open(f"{kit}/alerts.yml", encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                for n in NAME.findall(rule["expr"]):
                    referenced.setdefault(n, []).append("alert " + rule["alert"])
        dashboard = json.load(open(f"{kit}/grafana-dashboard.json", encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for n in NAME.findall(target["expr"]):
                    referenced.setdefault(n, []).append("panel " + panel["title"])
        for n, where in sorted(referenced.items()):
            if n not in names:
                problems.append(f"{n} (used by {', '.join(sorted(set(where)))}) is not in /metrics")
    print(json.dumps({"problems": problems, "samples": samples, "referenced": sorted(referenced)}))


main()

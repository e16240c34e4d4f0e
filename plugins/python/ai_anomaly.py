"""Anomalies in the log stream, each alert naming its evidence (design §6.2).

Three detectors, all on what the entries say (their order, not the clock, so a replayed or
delayed log gives the same answers):

- ``error_burst``: the share of WARN+ entries in a window of ``window`` entries against a
  moving baseline (exponentially weighted mean and deviation of earlier windows): an alert
  when it is over ``mean + burst_sigma × deviation`` and over ``burst_min_rate``.
- ``new_error_template``: an ERROR/FATAL message of a kind never seen before (numbers, IPs and
  hex masked), after ``warmup`` entries.
- ``repeated_failures``: ``failures_threshold`` failure messages (failed, denied, bad password,
  invalid, refused, unauthorized) from one IP within ``window`` entries: "Multiple auth
  failures from IP 192.168.0.5".
"""

import math
import re
from collections import deque

PLUGIN_INFO = {
    "name": "ai_anomaly",
    "version": "1.0.0",
    "type": "ai",
    "capability": ["text", "alert"],
    "author": "Logloom Team",
    "description": "Error bursts, new error templates and repeated failures from one source",
    "api": ">=1.0,<2",
}

IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
MASKS = [(IP, "<IP>"), (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<HEX>"), (re.compile(r"\d+"), "<N>")]
FAILURE = re.compile(r"fail|denied|bad password|invalid|refused|unauthori[sz]ed", re.IGNORECASE)
BAD_LEVELS = {"WARN", "ERROR", "FATAL"}

settings = {
    "window": 200,
    "warmup": 1000,
    "burst_sigma": 4.0,
    "burst_min_rate": 0.3,
    "failures_threshold": 10,
    "examples": 3,
}
state = {}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    state.update(
        seen=0,
        window_bad=0,
        baseline=None,  # (mean, variance) of the bad share per window
        templates=set(),
        failures=deque(),  # (entry number, ip, message) within the last window
        alerted_sources={},  # ip -> entry number of its last alert
    )
    return 0


def template(message):
    for pattern, mask in MASKS:
        message = pattern.sub(mask, message)
    return message


def analyze(entry):
    state["seen"] += 1
    seen = state["seen"]
    level = entry.get("level", "INFO")
    message = entry.get("message") or ""
    alerts = []
    if level in BAD_LEVELS:
        state["window_bad"] += 1
    alerts += new_template(entry, level, message, seen)
    if level in BAD_LEVELS and FAILURE.search(message):
        alerts += repeated_failures(entry, message, seen)
    if seen % int(settings["window"]) == 0:
        alerts += burst(seen)
    if not alerts:
        return None
    return (
        alerts[0]
        if len(alerts) == 1
        else {
            "kind": "anomalies",
            "alerts": alerts,
            "summary": "; ".join(a["summary"] for a in alerts),
        }
    )


def new_template(entry, level, message, seen):
    """Every message's shape is learnt; only an ERROR/FATAL one of a new shape is news."""
    shape = template(message)
    known = shape in state["templates"]
    state["templates"].add(shape)
    if known or seen <= settings["warmup"] or level not in ("ERROR", "FATAL"):
        return []
    return [
        {
            "kind": "anomaly",
            "type": "new_error_template",
            "summary": f"New {level} message: {shape}",
            "evidence": {
                "template": shape,
                "example": message,
                "module": entry.get("module", ""),
                "timestamp": entry.get("timestamp"),
                "entry_number": seen,
            },
        }
    ]


def repeated_failures(entry, message, seen):
    ips = IP.findall(message)
    if not ips:
        return []
    window = int(settings["window"])
    failures = state["failures"]
    failures.append((seen, ips[0], message, entry.get("timestamp")))
    while failures and failures[0][0] <= seen - window:
        failures.popleft()
    from_source = [f for f in failures if f[1] == ips[0]]
    last_alert = state["alerted_sources"].get(ips[0])
    if len(from_source) < settings["failures_threshold"]:
        return []
    if last_alert is not None and last_alert > seen - window:
        return []  # one alert per source per window
    state["alerted_sources"][ips[0]] = seen
    return [
        {
            "kind": "anomaly",
            "type": "repeated_failures",
            "summary": f"Multiple auth failures from IP {ips[0]}",
            "evidence": {
                "source": ips[0],
                "count": len(from_source),
                "within_entries": window,
                "first": from_source[0][3],
                "last": from_source[-1][3],
                "examples": [f[2] for f in from_source[-int(settings["examples"]) :]],
            },
        }
    ]


def burst(seen):
    window = int(settings["window"])
    share = state["window_bad"] / window
    state["window_bad"] = 0
    baseline = state["baseline"]
    alerts = []
    if baseline is not None and seen > settings["warmup"]:
        mean, variance = baseline
        limit = mean + settings["burst_sigma"] * math.sqrt(variance)
        if share > limit and share >= settings["burst_min_rate"]:
            alerts.append(
                {
                    "kind": "anomaly",
                    "type": "error_burst",
                    "summary": f"Error burst: {share:.0%} WARN+ in the last {window} entries "
                    f"(baseline {mean:.0%})",
                    "evidence": {
                        "share": round(share, 3),
                        "baseline": round(mean, 3),
                        "limit": round(limit, 3),
                        "window_entries": window,
                        "entry_number": seen,
                    },
                }
            )
            return alerts  # a burst does not become the new normal
    if baseline is None:
        state["baseline"] = (share, 0.0025)
    else:
        mean, variance = baseline
        weight = 0.2
        delta = share - mean
        mean += weight * delta
        variance = (1 - weight) * (variance + weight * delta * delta)
        state["baseline"] = (mean, max(variance, 0.0004))
    return alerts


def plugin_shutdown():
    state.clear()

"""Log templates: which kinds of messages the logs are made of, mined with Drain3.

Every message is folded into a template (``bad password for <*> from <IP>``). The plugin
answers nothing for most entries; it speaks up

- when a never-seen template appears after the warm-up (``kind: new_template``), and
- every ``summary_every`` entries (``kind: template_summary``): the top templates, the ones new
  since the last summary, counts per level, and the most frequent ERROR/FATAL templates with
  their most frequent variable parts (the IPs, users, ids filled into the ``<*>`` slots).

State (the template tree and the counts) lives in the worker process and grows with the number
of templates, not of entries.
"""

from collections import Counter, defaultdict

from drain3 import TemplateMiner
from drain3.masking import MaskingInstruction
from drain3.template_miner_config import TemplateMinerConfig

PLUGIN_INFO = {
    "name": "ai_log_templates",
    "version": "1.0.0",
    "type": "ai",
    "capability": ["text", "summary"],
    "author": "Logloom Team",
    "description": "Drain3 log-template mining: top, new and error templates with their values",
    "api": ">=1.0,<2",
}

# Masked before mining, so the values become template slots named after what they are.
MASKS = [
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "IP"),
    (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "UUID"),
    (r"\b0x[0-9a-fA-F]+\b", "HEX"),
    (r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.])", "NUM"),
]
ERROR_LEVELS = ("ERROR", "FATAL")

settings = {"summary_every": 1000, "warmup": 200, "top": 5, "similarity": 0.4}
state = {}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    miner_config = TemplateMinerConfig()
    miner_config.masking_instructions = [MaskingInstruction(rx, name) for rx, name in MASKS]
    miner_config.drain_sim_th = float(settings["similarity"])
    miner_config.profiling_enabled = False
    state.update(
        miner=TemplateMiner(config=miner_config),
        seen=0,
        levels=Counter(),
        counts=Counter(),  # cluster id -> entries
        errors=Counter(),  # cluster id -> ERROR/FATAL entries
        values=defaultdict(Counter),  # cluster id -> (slot, value) -> count, errors only
        new_since_summary=[],
    )
    return 0


def analyze(entry):
    message = entry.get("message") or entry.get("lang_key") or ""
    level = entry.get("level", "INFO")
    mined = state["miner"].add_log_message(message)
    cluster = mined["cluster_id"]
    state["seen"] += 1
    state["levels"][level] += 1
    state["counts"][cluster] += 1
    if level in ERROR_LEVELS:
        state["errors"][cluster] += 1
        template = mined["template_mined"]
        for parameter in state["miner"].extract_parameters(template, message) or []:
            state["values"][cluster][(parameter.mask_name, parameter.value)] += 1
    alert = None
    if mined["change_type"] == "cluster_created":
        state["new_since_summary"].append(cluster)
        if state["seen"] > settings["warmup"]:
            alert = {
                "kind": "new_template",
                "summary": f"New log template ({level}): {mined['template_mined']}",
                "template": mined["template_mined"],
                "level": level,
                "module": entry.get("module", ""),
                "example": message,
            }
    if state["seen"] % int(settings["summary_every"]) == 0:
        return summarise()
    return alert


def template_of(cluster):
    return state["miner"].drain.id_to_cluster[cluster].get_template()


def summarise():
    top = int(settings["top"])
    errors = []
    for cluster, count in state["errors"].most_common(top):
        by_slot = defaultdict(list)
        for (slot, value), times in state["values"][cluster].most_common():
            if len(by_slot[slot]) < 3:
                by_slot[slot].append([value, times])
        errors.append({"template": template_of(cluster), "count": count, "values": by_slot})
    new = [template_of(cluster) for cluster in state["new_since_summary"]]
    state["new_since_summary"] = []
    headline = errors[0]["template"] if errors else "none"
    return {
        "kind": "template_summary",
        "summary": (
            f"{state['seen']} entries, {len(state['counts'])} templates; "
            f"top error template: {headline}"
        ),
        "entries": state["seen"],
        "levels": dict(state["levels"]),
        "top_templates": [
            {"template": template_of(cluster), "count": count}
            for cluster, count in state["counts"].most_common(top)
        ],
        "new_templates": new,
        "top_error_templates": errors,
    }


def plugin_shutdown():
    state.clear()

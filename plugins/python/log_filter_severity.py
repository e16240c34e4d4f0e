"""Keep entries at or above a minimum level (design §5.5.9); ``min_level`` comes from the YAML."""

PLUGIN_INFO = {
    "name": "log_filter_severity",
    "version": "1.1.0",
    "type": "filter",
    "capability": ["text"],
    "author": "Logloom Team",
    "description": "Drops entries below min_level (default INFO)",
}

LEVEL_MAP = {"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3, "FATAL": 4}

min_level_value = LEVEL_MAP["INFO"]


def plugin_init(config):
    global min_level_value
    min_level = str(config.get("min_level", "INFO")).upper()
    if min_level not in LEVEL_MAP:
        raise ValueError(f"min_level {min_level!r} is not one of {', '.join(LEVEL_MAP)}")
    min_level_value = LEVEL_MAP[min_level]
    return 0


def plugin_process(entry):
    """True keeps the entry. An unknown level counts as INFO, as in the design."""
    return LEVEL_MAP.get(entry.get("level"), 1) >= min_level_value


def plugin_shutdown():
    pass

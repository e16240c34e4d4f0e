"""Bundled plugins, written exactly as users write theirs; see ``python/``."""

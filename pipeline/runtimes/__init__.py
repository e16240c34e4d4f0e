"""One module per plugin runtime; each adapts its plugins onto :class:`pipeline.plugin.Plugin`."""

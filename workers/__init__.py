"""The long-running processes: stage workers, ``logloom up``'s supervisor, the demo producer."""

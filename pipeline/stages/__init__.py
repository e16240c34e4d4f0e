"""The stages: ``filter`` (ingest → filtered), and one ``sink`` stage per sink plugin."""

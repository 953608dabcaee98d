"""Data layer: read + validate files, select groups, apply prompts, batch, collate."""

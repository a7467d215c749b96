"""rankalign.stats (see DESIGN.md)."""

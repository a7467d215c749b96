"""rankalign.engine (see DESIGN.md)."""

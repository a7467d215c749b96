"""rankalign.sim (see DESIGN.md)."""

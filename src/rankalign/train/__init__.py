"""rankalign.train (see DESIGN.md)."""

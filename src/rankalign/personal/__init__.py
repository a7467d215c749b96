"""rankalign.personal (see DESIGN.md)."""

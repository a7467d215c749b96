"""rankalign.reward (see DESIGN.md)."""

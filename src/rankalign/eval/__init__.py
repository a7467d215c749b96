"""rankalign.eval (see DESIGN.md)."""

"""Search strategies: how the architecture parameters move and when a search stops; no model code here."""

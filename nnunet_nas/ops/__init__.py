"""Candidate operations and the op catalog (the only op table of the package)."""

"""Genotypes: small, versioned, human-readable JSON hand-offs between search and retraining."""

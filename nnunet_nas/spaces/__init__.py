"""Supernets and fixed spaces: modules only; they own no architecture parameters."""

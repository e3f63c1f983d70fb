"""Discretisation of searched architecture parameters into fixed, feasible architecture codes."""

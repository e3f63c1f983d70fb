"""Genotypes: the JSON hand-off between a search and the fixed network (see schema.py)."""
from nnunet_nas.genotypes import grid  # noqa: F401 - registers nnunet_nas.grid
from nnunet_nas.genotypes import cell  # noqa: F401 - registers nnunet_nas.cells

"""The cell genotype (DARTS-style methods: SCNAS's four cell types, IAC's implanted cell): versioned JSON.

JSON layout (``version`` 2; version 1, without ``geometry``, still loads, as isotropic)::

    {"schema": "nnunet_nas.cells", "version": 2, "op_set": "scnas_3d", "spatial_dims": 3, "num_nodes": 4,
     "cell_types": ["encoder_normal", "reduction", "decoder_normal", "expansion"],
     "encoder_normal": [                       # one row per intermediate node j: the op on each incoming edge,
       ["conv_3x3x3", null],                   # from states 0 .. j+1 (inputs s0, s1, then earlier nodes);
       ["skip", null, "max_pool_3"],           # null: no edge (the search chose "zero")
       ...],
     ...
     "geometry": {"strides": [...], "kernels": [...]},  # per resolution level; null: isotropic (or the host's)
     "provenance": {...}}

Every node keeps at least one incoming edge (:meth:`CellGenotype.validate`); op names must belong to the op set.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_nas.genotypes.schema import (Genotype, GenotypeError, expect_geometry, expect_int, expect_provenance,
                                         expect_rows, geometry_dict, register_schema)
from nnunet_nas.ops.catalog import OP_SETS, get_op_set

SCHEMA = "nnunet_nas.cells"
VERSION = 2
READS = (1, 2)
_FIXED_KEYS = ("schema", "version", "op_set", "spatial_dims", "num_nodes", "cell_types", "geometry", "provenance")


@register_schema(SCHEMA)
@dataclass(eq=False)
class CellGenotype(Genotype):
    op_set: str
    cells: Dict[str, List[List[Optional[str]]]]  # cell type -> per node, the op on each incoming edge or None
    num_nodes: int = 4
    provenance: dict = field(default_factory=dict)
    spatial_dims: Optional[int] = None  # None: the op set's
    geometry: Optional[object] = None  # Geometry of the network's resolution levels; None: isotropic

    @property
    def cell_types(self) -> List[str]:
        return list(self.cells)

    def kept_edges(self) -> np.ndarray:
        """``[cell types, edges]`` booleans: the edges the genotype keeps (an op, not ``None``), in the order of the
        search's ``op_logits``."""
        return np.array([[op is not None for op in self.edge_ops(t)] for t in self.cell_types])

    def edge_decisions(self) -> List[Optional[str]]:
        """Per edge of every cell type, in the order of the search's ``op_logits``: the op kept, or None."""
        return [op for t in self.cell_types for op in self.edge_ops(t)]

    def edge_ops(self, cell_type: str) -> List[Optional[str]]:
        """The cell's ops in edge order (:func:`nnunet_nas.spaces.cell.cell_edges`)."""
        return [op for row in self.cells[cell_type] for op in row]

    @classmethod
    def from_edge_ops(cls, op_set: str, edge_ops: Dict[str, Sequence[Optional[str]]], num_nodes: int = 4,
                      provenance: Optional[dict] = None) -> "CellGenotype":
        cells = {}
        for name, ops in edge_ops.items():
            rows, e = [], 0
            for node in range(num_nodes):
                rows.append(list(ops[e:e + node + 2]))
                e += node + 2
            cells[name] = rows
        g = cls(op_set, cells, num_nodes, dict(provenance or {}))
        g.validate()
        return g

    def validate(self, source: str = "genotype", cell_types: Optional[Sequence[str]] = None) -> None:
        """Raise :class:`GenotypeError` naming the problem; ``cell_types``: the ones a network needs."""
        if self.op_set not in OP_SETS:
            raise GenotypeError(f"{source}: unknown op set {self.op_set!r}; known op sets: {sorted(OP_SETS)}.")
        spec = get_op_set(self.op_set)
        if self.spatial_dims != spec.spatial_dims:
            raise GenotypeError(f"{source}: spatial_dims {self.spatial_dims} does not match op set {self.op_set!r} "
                                f"({spec.spatial_dims}-D).")
        if cell_types is not None and sorted(cell_types) != sorted(self.cells):
            raise GenotypeError(f"{source}: cell types {sorted(self.cells)} do not match the network's "
                                f"{sorted(cell_types)}; this genotype belongs to another method.")
        if self.num_nodes < 1:
            raise GenotypeError(f"{source}: num_nodes={self.num_nodes}; a cell needs at least 1 intermediate node.")
        if not self.cells:
            raise GenotypeError(f"{source}: no cell types; a cell genotype lists at least one cell.")
        names = [o.name for o in spec.ops]
        for cell, rows in self.cells.items():
            if len(rows) != self.num_nodes:
                raise GenotypeError(f"{source}: cell {cell!r} has {len(rows)} node rows, expected num_nodes="
                                    f"{self.num_nodes}.")
            for j, row in enumerate(rows):
                if len(row) != j + 2:
                    raise GenotypeError(f"{source}: cell {cell!r} node {j} lists {len(row)} incoming edges, expected "
                                        f"{j + 2} (inputs s0, s1 and the {j} earlier nodes).")
                for op in row:
                    if op is not None and (op not in names or op == "zero"):
                        raise GenotypeError(
                            f"{source}: cell {cell!r} node {j}: unknown operation {op!r} for op set {self.op_set!r} "
                            f"(use one of {[n for n in names if n != 'zero']}, or null for no edge).")
                if all(op is None for op in row):
                    raise GenotypeError(f"{source}: cell {cell!r} node {j} has no incoming edge; every node needs at "
                                        f"least one.")

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "version": VERSION, "op_set": self.op_set, "spatial_dims": self.spatial_dims,
             "num_nodes": self.num_nodes, "cell_types": self.cell_types}
        d.update({name: [list(r) for r in rows] for name, rows in self.cells.items()})
        d["geometry"] = geometry_dict(self.geometry)
        d["provenance"] = self.provenance
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "genotype") -> "CellGenotype":
        if d.get("schema") != SCHEMA:
            raise GenotypeError(f"{source}: schema {d.get('schema')!r} is not {SCHEMA!r}.")
        if d.get("version") not in READS:
            raise GenotypeError(f"{source}: cell genotype version {d.get('version')!r} is not supported (this "
                                f"nnunet_nas reads versions {list(READS)}); upgrade nnunet_nas.")
        missing = [k for k in ("op_set", "num_nodes", "cell_types") if k not in d]
        types = d.get("cell_types")
        if missing or not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise GenotypeError(f"{source}: malformed cell genotype (missing {missing} or cell_types not a list of "
                                f"names); expected the keys {list(_FIXED_KEYS)} and one row list per cell type.")
        absent = [t for t in types if t not in d]
        if absent:
            raise GenotypeError(f"{source}: cell types {absent} are listed in cell_types but have no rows.")
        unknown = sorted(set(d) - set(_FIXED_KEYS) - set(types))
        if unknown:
            raise GenotypeError(f"{source}: unknown keys {unknown} (a cell genotype has {list(_FIXED_KEYS)} and one "
                                f"key per entry of cell_types {types}).")
        is_op = lambda v: v is None or isinstance(v, str)  # noqa: E731
        cells = {t: expect_rows(d[t], t, source, is_op, "an op name or null") for t in types}
        if not isinstance(d["op_set"], str):
            raise GenotypeError(f"{source}: op_set must be an op set name, found {d['op_set']!r}.")
        spatial_dims = None if d.get("spatial_dims") is None else expect_int(d["spatial_dims"], "spatial_dims", source)
        g = cls(d["op_set"], cells, expect_int(d["num_nodes"], "num_nodes", source), expect_provenance(d, source),
                spatial_dims)
        g.geometry = expect_geometry(d, d["version"], g.spatial_dims, source)
        g.validate(source)
        return g

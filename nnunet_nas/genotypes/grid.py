"""The grid genotype (DiNTS / DAST): versioned JSON with op names, never op indices.

JSON layout (``version`` 2; version 1, without ``geometry``, still loads, as isotropic)::

    {"schema": "nnunet_nas.grid", "version": 2, "op_set": "dints_3d", "spatial_dims": 3,
     "num_blocks": L, "num_depths": D,
     "node_a": [[0/1] * D] * (L + 1),        # row 0: inputs of block 0; row b+1: outputs of block b
     "edges":  [[0/1] * E] * L,              # E = 3D-2, MONAI path order (nnunet_nas.spaces.grid_topology)
     "ops":    [[op name or null] * E] * L,  # null on inactive edges
     "geometry": {"strides": [[..] * dims] * (D + 1), "kernels": [..]},  # null: isotropic
     "provenance": {...}}                    # method, dataset, fold, epoch, package version, config

``node_a`` is redundant with ``edges`` and is checked against it; a genotype is feasible when every block is
non-empty and the input levels of block b+1 equal the output levels of block b (paper section 3.3.3).
"""

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from nnunet_nas.genotypes.schema import (Genotype, GenotypeError, expect_geometry, expect_int, expect_provenance,
                                         expect_rows, geometry_dict, register_schema)
from nnunet_nas.ops.catalog import OP_SETS, get_op_set, op_names, op_sets_with
from nnunet_nas.spaces.grid_topology import check_num_blocks, check_num_depths, grid_topology

SCHEMA = "nnunet_nas.grid"
VERSION = 2
READS = (1, 2)


@register_schema(SCHEMA)
@dataclass(eq=False)
class GridGenotype(Genotype):
    op_set: str
    node_a: np.ndarray  # int64 [L+1, D]
    arch_code_a: np.ndarray  # int64 [L, E]
    ops: list  # [L][E] op name or None
    provenance: dict = field(default_factory=dict)
    spatial_dims: Optional[int] = None  # None: the op set's
    geometry: Optional[object] = None  # Geometry of the D + 1 stages (input, levels); None: isotropic

    @property
    def num_blocks(self) -> int:
        return self.arch_code_a.shape[0]

    @property
    def num_depths(self) -> int:
        return self.node_a.shape[1]

    def edge_decisions(self) -> List[Optional[str]]:
        """Per block and edge, in the order of the search's ``op_logits``: the op of an active edge, or None."""
        return [op if on else None for row, on_row in zip(self.ops, self.arch_code_a) for op, on in zip(row, on_row)]

    def op_indices(self) -> np.ndarray:
        """``[L, E]`` op indices in the op set's order (0 on inactive edges)."""
        names = op_names(self.op_set)
        return np.array([[names.index(o) if o is not None else 0 for o in row] for row in self.ops], dtype=np.int64)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "version": VERSION, "op_set": self.op_set, "spatial_dims": self.spatial_dims,
            "num_blocks": self.num_blocks, "num_depths": self.num_depths,
            "node_a": self.node_a.astype(int).tolist(), "edges": self.arch_code_a.astype(int).tolist(),
            "ops": [list(r) for r in self.ops], "geometry": geometry_dict(self.geometry),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "genotype") -> "GridGenotype":
        if not isinstance(d, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(d).__name__}.")
        if d.get("schema") != SCHEMA:
            raise GenotypeError(f"{source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}. Is this a DiNTS "
                                f"genotype written by nnunet_nas? MONAI arch codes are imported with "
                                f"`nnunet-nas add-arch --monai FILE`.")
        if d.get("version") not in READS:
            raise GenotypeError(f"{source}: genotype version {d.get('version')!r} is not supported by this nnunet_nas "
                                f"(reads versions {list(READS)}); upgrade nnunet_nas or re-export the genotype.")
        missing = [k for k in ("op_set", "num_blocks", "num_depths", "node_a", "edges", "ops") if k not in d]
        if missing:
            raise GenotypeError(f"{source}: missing keys {missing}; the file is truncated or not a genotype.")
        if not isinstance(d["op_set"], str) or d["op_set"] not in OP_SETS:
            raise GenotypeError(f"{source}: unknown op set {d['op_set']!r}; known: {sorted(OP_SETS)}.")
        is_bit = lambda v: isinstance(v, int) and not isinstance(v, bool) and v in (0, 1)  # noqa: E731
        node_a = expect_rows(d["node_a"], "node_a", source, is_bit, "0 or 1")
        edges = expect_rows(d["edges"], "edges", source, is_bit, "0 or 1")
        ops = expect_rows(d["ops"], "ops", source, lambda v: v is None or isinstance(v, str), "an op name or null")
        if any(len(r) != len(node_a[0]) for r in node_a) or any(len(r) != len(edges[0]) for r in edges) or \
                not node_a or not edges:
            raise GenotypeError(f"{source}: node_a and edges must be non-empty rectangular [rows][columns] lists.")
        spatial_dims = None if d.get("spatial_dims") is None else expect_int(d["spatial_dims"], "spatial_dims", source)
        g = cls(d["op_set"], np.asarray(node_a, dtype=np.int64), np.asarray(edges, dtype=np.int64), ops,
                expect_provenance(d, source), spatial_dims)
        g.geometry = expect_geometry(d, d["version"], g.spatial_dims, source)
        g.validate(source, expected_blocks=expect_int(d["num_blocks"], "num_blocks", source),
                   expected_depths=expect_int(d["num_depths"], "num_depths", source))
        return g

    # ----------------------------------------------------------------- validation
    def validate(self, source: str = "genotype", expected_blocks: Optional[int] = None,
                 expected_depths: Optional[int] = None) -> None:
        try:
            check_num_depths(int(self.node_a.shape[1]) if self.node_a.ndim == 2 else -1)
            check_num_blocks(int(self.arch_code_a.shape[0]) if self.arch_code_a.ndim == 2 else -1)
        except ValueError as e:
            raise GenotypeError(f"{source}: {e}") from None
        if self.spatial_dims != get_op_set(self.op_set).spatial_dims:
            raise GenotypeError(f"{source}: spatial_dims {self.spatial_dims} disagrees with op set {self.op_set} "
                                f"({get_op_set(self.op_set).spatial_dims}-D).")
        topo = grid_topology(self.num_depths)
        L, D, E = self.num_blocks, self.num_depths, topo.num_edges
        if self.geometry is not None and self.geometry.num_stages != D + 1:
            raise GenotypeError(f"{source}: geometry has {self.geometry.num_stages} stages, a grid of D={D} levels "
                                f"needs D + 1 = {D + 1} (the input stage and one per level).")
        if expected_depths is not None and expected_depths != D or expected_blocks is not None and expected_blocks != L:
            raise GenotypeError(f"{source}: num_blocks/num_depths ({expected_blocks}, {expected_depths}) disagree with "
                                f"the arrays ([L, E] = {list(self.arch_code_a.shape)}, "
                                f"node_a {list(self.node_a.shape)}).")
        for name, arr, shape in (("node_a", self.node_a, (L + 1, D)), ("edges", self.arch_code_a, (L, E))):
            if arr.shape != shape:
                raise GenotypeError(f"{source}: {name} has shape {list(arr.shape)}, expected {list(shape)} for "
                                    f"L={L} blocks and D={D} levels (E=3D-2={E} edges per block).")
            if not np.isin(arr, (0, 1)).all():
                raise GenotypeError(f"{source}: {name} must hold only 0 and 1.")
        if len(self.ops) != L or any(len(r) != E for r in self.ops):
            raise GenotypeError(f"{source}: ops must be an [L][E] = [{L}][{E}] list of op names.")
        names = op_names(self.op_set)
        for b in range(L):
            for e in range(E):
                o = self.ops[b][e]
                if self.arch_code_a[b, e] and o not in names:
                    holders = op_sets_with(o, get_op_set(self.op_set).spatial_dims) if isinstance(o, str) else ()
                    hint = f" It is an op of {list(holders)}: set \"op_set\" to the space it was searched in." \
                        if holders else ""
                    raise GenotypeError(f"{source}: block {b} edge {e} is active but its op {o!r} is not in op set "
                                        f"{self.op_set} {list(names)}.{hint}")
                if not self.arch_code_a[b, e] and o is not None and o not in names:
                    raise GenotypeError(f"{source}: block {b} edge {e}: unknown op {o!r}.")
        for b in range(L):
            on = self.arch_code_a[b].astype(bool)
            if not on.any():
                raise GenotypeError(f"{source}: block {b} has no active edge; every block needs at least one.")
            ins = np.isin(np.arange(D), topo.edge_in[on]).astype(np.int64)
            outs = np.isin(np.arange(D), topo.edge_out[on]).astype(np.int64)
            if (ins != self.node_a[b]).any() or (outs != self.node_a[b + 1]).any():
                raise GenotypeError(
                    f"{source}: infeasible topology at block {b}: its edges read levels {ins.tolist()} and write "
                    f"{outs.tolist()}, but node_a says {self.node_a[b].tolist()} -> {self.node_a[b + 1].tolist()} "
                    f"(a level must be written by block b-1 exactly when block b reads it). Decode with "
                    f"nnunet_nas.discretize.grid_path, which guarantees feasibility.")

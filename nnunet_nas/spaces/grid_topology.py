"""Static combinatorics of the DiNTS L x D grid (He et al., CVPR 2021, section 3.3).

Everything here depends only on the number of resolution levels ``D`` and is built once per ``D``
(``grid_topology(D)`` is cached). Layouts follow MONAI so that architecture codes are interchangeable:

* edges ``e = 0..E-1`` with ``E = 3D - 2`` are grouped by output node ``m``: from ``m-1`` (a finer node,
  down-sampled), from ``m`` (same resolution), from ``m+1`` (a coarser node, up-sampled), truncated at the
  top and bottom level. ``edge_in[e]``/``edge_out[e]`` are the source/target levels and
  ``edge_dir[e] = edge_in - edge_out`` is -1 (down), 0 (same) or +1 (up).
* connection patterns ``j = 0..M-1`` with ``M = 2^E - 1`` are the non-empty edge subsets, in MONAI's
  enumeration order: pattern ``j`` is the binary expansion of ``j + 1`` over E bits with edge 0 as the most
  significant bit.
* node-activation patterns ``a`` are encoded as bitmasks over levels (bit ``d`` set means level ``d`` is
  active), ``1..2^D - 1``.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_DEPTHS = 2
MAX_DEPTHS = 5  # 2^(3*5-2) - 1 = 8191 patterns per block; D = 6 would need 65535 and is refused


@dataclass(frozen=True)
class GridTopology:
    """Index tables of the DiNTS grid for ``num_depths`` resolution levels (all arrays read-only).

    Attributes:
        num_depths: D.
        num_edges: E = 3D - 2.
        edge_in, edge_out, edge_dir: int64 ``[E]``.
        patterns: uint8 ``[M, E]``, pattern j's edge indicator vector ``cp_j`` (Eq. 1-2).
        pattern_in_nodes: int64 ``[M]``, bitmask of source levels used by pattern j.
        pattern_out_nodes: int64 ``[M]``, bitmask of target levels activated by pattern j.
    """

    num_depths: int
    num_edges: int
    edge_in: np.ndarray
    edge_out: np.ndarray
    edge_dir: np.ndarray
    patterns: np.ndarray
    pattern_in_nodes: np.ndarray
    pattern_out_nodes: np.ndarray

    @property
    def num_node_patterns(self) -> int:
        return 2 ** self.num_depths - 1


def check_num_depths(num_depths: int) -> None:
    if not isinstance(num_depths, (int, np.integer)) or not MIN_DEPTHS <= num_depths <= MAX_DEPTHS:
        raise ValueError(
            f"DiNTS grid: unsupported number of resolution levels D={num_depths!r}. Supported: "
            f"{MIN_DEPTHS}..{MAX_DEPTHS} (D=4 is the paper's setting; D={MAX_DEPTHS + 1} would mean "
            f"{2 ** (3 * (MAX_DEPTHS + 1) - 2) - 1} connection patterns per block). Choose num_depths in that range."
        )


def check_num_blocks(num_blocks: int) -> None:
    if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
        raise ValueError(f"DiNTS grid: num_blocks (L) must be a positive integer, got {num_blocks!r}.")


@lru_cache(maxsize=None)
def grid_topology(num_depths: int) -> GridTopology:
    check_num_depths(num_depths)
    edge_in, edge_out = [], []
    for m in range(num_depths):
        for src in (m - 1, m, m + 1):
            if 0 <= src < num_depths:
                edge_in.append(src)
                edge_out.append(m)
    edge_in = np.asarray(edge_in, dtype=np.int64)
    edge_out = np.asarray(edge_out, dtype=np.int64)
    num_edges = len(edge_in)
    assert num_edges == 3 * num_depths - 2

    codes = np.arange(1, 2 ** num_edges, dtype=np.int64)
    shifts = np.arange(num_edges - 1, -1, -1, dtype=np.int64)  # edge 0 is the most significant bit
    patterns = ((codes[:, None] >> shifts[None, :]) & 1).astype(np.uint8)
    in_bits = (1 << edge_in).astype(np.int64)
    out_bits = (1 << edge_out).astype(np.int64)
    pattern_in = np.bitwise_or.reduce(np.where(patterns == 1, in_bits[None, :], 0), axis=1)
    pattern_out = np.bitwise_or.reduce(np.where(patterns == 1, out_bits[None, :], 0), axis=1)
    arrays = [edge_in, edge_out, edge_in - edge_out, patterns, pattern_in, pattern_out]
    for a in arrays:
        a.setflags(write=False)
    return GridTopology(num_depths, num_edges, *arrays)

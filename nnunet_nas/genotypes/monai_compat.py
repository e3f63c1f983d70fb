"""Conversion between MONAI DiNTS arch codes and :class:`GridGenotype`.

MONAI layout (``monai.networks.nets.dints``): ``node_a`` [L+1, D] (its docstring says the transpose),
``arch_code_a`` [L, E] 0/1 floats, ``arch_code_c`` [L, E] op indices 0 skip, 1 conv3x3x3, 2 P3D 3x3x1,
3 P3D 3x1x3, 4 P3D 1x3x3 (``nnunet_nas.ops.catalog.DINTS_3D`` has the same order). The path order is the same
as ours. Files are a torch pickle of numpy arrays (MONAI tutorials) or JSON lists (``../shared/reference``).

MONAI's architectures are isotropic (every level 2x, 3x3x3 kernels): an imported genotype records no geometry, so
its network is built isotropic whatever the plan it is registered on, and the export says so.
"""

from typing import Optional

import numpy as np

from nnunet_nas.errors import UserError
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.genotypes.schema import GenotypeError
from nnunet_nas.io import load_torch_file, read_json
from nnunet_nas.ops.catalog import op_names


def from_monai_codes(node_a, arch_code_a, arch_code_c, op_set: str = "dints_3d",
                     provenance: Optional[dict] = None, source: str = "MONAI arch code") -> GridGenotype:
    node_a, code_a, code_c = (np.asarray(a) for a in (node_a, arch_code_a, arch_code_c))
    if code_a.ndim != 2 or code_c.shape != code_a.shape or node_a.ndim != 2:
        raise GenotypeError(f"{source}: expected node_a [L+1, D], arch_code_a [L, E] and arch_code_c [L, E]; got "
                            f"{list(node_a.shape)}, {list(code_a.shape)}, {list(code_c.shape)}.")
    names = op_names(op_set)
    if code_c.size and (code_c.min() < 0 or code_c.max() >= len(names)):
        raise GenotypeError(f"{source}: arch_code_c holds op indices outside 0..{len(names) - 1}; use the indices of "
                            f"{op_set}'s ops {list(names)} (MONAI's order).")
    ops = [[names[int(c)] if a else None for a, c in zip(ra, rc)] for ra, rc in zip(code_a, code_c)]
    g = GridGenotype(op_set, node_a.astype(np.int64), np.rint(code_a).astype(np.int64), ops, dict(provenance or {}))
    g.validate(source)
    return g


def to_monai_codes(g: GridGenotype):
    """-> (node_a int64 [L+1, D], arch_code_a float64 [L, E], arch_code_c int64 [L, E])."""
    return g.node_a.astype(np.int64), g.arch_code_a.astype(np.float64), g.op_indices()


def load_monai_file(path: str) -> GridGenotype:
    """Read a MONAI arch-code file (``.pth`` torch pickle or ``.json``; keys ``node_a``/``arch_code_a``/
    ``arch_code_c`` as in the tutorials, or ``code_a``/``code_c`` as in Auto3DSeg)."""
    try:
        d = read_json(path, "a MONAI arch code (node_a, arch_code_a, arch_code_c)") if path.endswith(".json") else \
            load_torch_file(path, "a MONAI arch code (.pth with node_a, arch_code_a, arch_code_c)")
    except UserError as e:
        raise GenotypeError(str(e)) from None
    if not isinstance(d, dict):
        raise GenotypeError(f"{path}: expected a dict with node_a, arch_code_a and arch_code_c.")
    get = lambda *keys: next((d[k] for k in keys if k in d), None)  # noqa: E731
    node_a, code_a, code_c = get("node_a"), get("arch_code_a", "code_a"), get("arch_code_c", "code_c")
    if node_a is None or code_a is None or code_c is None:
        raise GenotypeError(f"{path}: missing keys; found {sorted(d)}, need node_a, arch_code_a, arch_code_c.")
    def to_np(a, key):
        try:
            array = a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)
        except (TypeError, ValueError):
            raise GenotypeError(f"{path}: {key} must be a rectangular array of numbers.") from None
        if array.dtype.kind not in "iufb" or not np.isfinite(array.astype(np.float64)).all():
            raise GenotypeError(f"{path}: {key} must hold finite numbers, found dtype {array.dtype}.")
        if (array != np.rint(array)).any():
            raise GenotypeError(f"{path}: {key} must hold whole numbers (0/1 flags and op indices).")
        return array

    node_a, code_a, code_c = to_np(node_a, "node_a"), to_np(code_a, "arch_code_a"), to_np(code_c, "arch_code_c")
    return from_monai_codes(node_a, code_a, code_c,
                            provenance={"method": "dints", "source": "monai_arch_code", "file": path}, source=path)

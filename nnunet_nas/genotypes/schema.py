"""What every genotype shares, and the dispatch on the ``schema`` name of a genotype's JSON.

A genotype is the whole hand-off between a search and the fixed network (DARTS): a small, versioned,
human-readable JSON object with a ``schema`` name (``nnunet_nas.grid`` for DiNTS / DAST, a cell schema for
DARTS-style methods), a ``version``, op names (never indices), ``spatial_dims``, the ``geometry`` it was searched
in (per-axis strides and kernels from nnU-Net's plan, version 2; null or absent: isotropic) and a
``provenance``. Each genotype class registers its schema name with :func:`register_schema`;
:func:`genotype_from_dict` and :func:`load_genotype` read any of them.
"""

import json
import numbers
from typing import Dict, Optional, Type

from nnunet_nas.errors import UserError
from nnunet_nas.io import atomic_write_text, read_json

SCHEMAS: Dict[str, Type["Genotype"]] = {}


class GenotypeError(UserError, ValueError):
    """A genotype file or dict that cannot be used; the message names the problem and the fix."""


def expect_int(value, what: str, source: str) -> int:
    """``value`` if it is a JSON integer (not a bool, a float or a string), else one :class:`GenotypeError`."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise GenotypeError(f"{source}: {what} must be an integer, found {value!r}.")
    return int(value)


def expect_rows(value, what: str, source: str, item_ok, item_text: str) -> list:
    """``value`` as a list of lists whose items pass ``item_ok``, else one :class:`GenotypeError` naming the first
    bad item."""
    if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
        raise GenotypeError(f"{source}: {what} must be a list of rows (lists), found {type(value).__name__}.")
    for i, row in enumerate(value):
        for j, item in enumerate(row):
            if not item_ok(item):
                raise GenotypeError(f"{source}: {what}[{i}][{j}] is {item!r}; it must be {item_text}.")
    return [list(r) for r in value]


def expect_provenance(d: dict, source: str) -> dict:
    provenance = d.get("provenance", {})
    if not isinstance(provenance, dict):
        raise GenotypeError(f"{source}: provenance must be an object, found {type(provenance).__name__}.")
    return dict(provenance)


def expect_geometry(d: dict, version: int, spatial_dims: Optional[int], source: str):
    """The per-axis strides and kernels a genotype was searched with (:class:`~nnunet_nas.geometry.Geometry`);
    None (isotropic) for a genotype of a version written before geometries were recorded, or with ``null``."""
    from nnunet_nas.errors import PlansError
    from nnunet_nas.geometry import Geometry
    if version < 2 or d.get("geometry") is None:
        return None
    if spatial_dims is None:
        raise GenotypeError(f"{source}: a geometry needs spatial_dims.")
    try:
        return Geometry.from_dict(d["geometry"], spatial_dims, f"{source}: geometry")
    except PlansError as e:
        raise GenotypeError(str(e)) from None


def geometry_dict(geometry) -> Optional[dict]:
    return None if geometry is None else geometry.to_dict()


def register_schema(name: str):
    """Class decorator: ``name`` is the ``schema`` value of the class's JSON."""
    def deco(cls):
        if name in SCHEMAS and SCHEMAS[name] is not cls:
            raise ValueError(f"genotype schema {name!r} is registered twice "
                             f"({SCHEMAS[name].__name__}, {cls.__name__}).")
        SCHEMAS[name] = cls
        cls.schema_name = name
        return cls
    return deco


class Genotype:
    """Base of the genotype classes: ``to_dict`` / ``from_dict`` / ``validate`` are theirs; saving, loading and
    equality (of the JSON) are shared."""
    schema_name: str = ""
    spatial_dims: int

    def __post_init__(self):  # dataclass subclasses: spatial_dims None means the op set's
        from nnunet_nas.ops.catalog import OP_SETS, get_op_set
        if self.spatial_dims is None and self.op_set in OP_SETS:
            self.spatial_dims = get_op_set(self.op_set).spatial_dims

    def to_dict(self) -> dict:
        raise NotImplementedError

    def edge_decisions(self) -> list:
        """Per edge of the search space, in the order of the search's ``op_logits``: the op kept or None (what
        :mod:`nnunet_nas.agreement` compares)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict, source: str = "genotype") -> "Genotype":
        return genotype_from_dict(d, source)

    def save(self, path: str) -> None:
        """Write JSON atomically (temporary file + rename)."""
        atomic_write_text(path, to_json_text(self.to_dict()))

    @classmethod
    def load(cls, path: str) -> "Genotype":
        try:
            d = read_json(path, "a genotype JSON (written by a search or nnunet-nas export)")
        except UserError as e:
            raise GenotypeError(str(e)) from None
        return cls.from_dict(d, source=path)

    def __eq__(self, other) -> bool:
        return isinstance(other, Genotype) and self.to_dict() == other.to_dict()


def genotype_from_dict(d: dict, source: str = "genotype") -> Genotype:
    """Read any registered genotype, dispatched on ``d["schema"]``."""
    import nnunet_nas.genotypes  # noqa: F401 - registers the schemas of the package
    if not isinstance(d, dict):
        raise GenotypeError(f"{source}: expected a JSON object, got {type(d).__name__}.")
    cls = SCHEMAS.get(d.get("schema"))
    if cls is None:
        raise GenotypeError(f"{source}: schema {d.get('schema')!r} is not a genotype schema of nnunet_nas (known: "
                            f"{sorted(SCHEMAS)}). MONAI arch codes are imported with "
                            f"`nnunet-nas add-arch --monai FILE`.")
    return cls.from_dict(d, source)


def load_genotype(path: str) -> Genotype:
    """Read a genotype JSON file of any registered schema."""
    return Genotype.load(path)


def to_json_text(d: dict) -> str:
    """JSON with one line per array row, so a genotype reads like the grid it describes."""
    lines = []
    for i, (k, v) in enumerate(d.items()):
        comma = "," if i < len(d) - 1 else ""
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n    ".join(json.dumps(r) for r in v)
            lines.append(f'  {json.dumps(k)}: [\n    {rows}\n  ]{comma}')
        else:
            lines.append(f'  {json.dumps(k)}: {json.dumps(v)}{comma}')
    return "{\n" + "\n".join(lines) + "\n}\n"

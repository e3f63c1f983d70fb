"""DAST (Yang et al., MICCAI 2023): the DiNTS search with a transformer among the cell operations.

The record is DiNTS's (:mod:`nnunet_nas.methods.dints`: grid space, architecture parameters, weighting, the
regularisers of Eq. 5, 7, 10 and 11, the topology-guaranteed decoder, the grid genotype, the fixed
:class:`~nnunet_nas.networks.dints_net.DiNTSNet`) with three differences:

* the op sets ``dast_3d`` / ``dast_2d`` (skip, conv, transformer; ``factorised_ops`` adds the DiNTS set's factorised
  ops: ``dast_3d_p3d`` / ``dast_2d_p2d``), whose transformer (:mod:`nnunet_nas.ops.transformer`) brings its own
  memory function into the grid's memory model, so the budget steers where transformers go;
* the space knows the configuration's patch: each level's transformers get a token grid that fits the level
  (``token_grid``), and the memory model counts their token-grid term at that patch;
* the grid levels' channels are multiples of the attention heads, in the search and in the export.

The fixed network's ``arch_kwargs`` carry ``patch_size``, ``op_options`` (token grid, heads) and
``channel_multiple`` beside DiNTS's; token grid and heads come from the search config in the genotype's provenance
(DASTSearchConfig's defaults for a genotype without one).
"""

from dataclasses import dataclass, replace
from typing import ClassVar, Optional

from nnunet_nas.config_rules import boolean, integer, optional
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.methods import dints
from nnunet_nas.methods.dints import DiNTSSearchConfig
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.registry import register_method

DAST_OP_SETS = {3: "dast_3d", 2: "dast_2d"}
DAST_FACTORISED_OP_SETS = {3: "dast_3d_p3d", 2: "dast_2d_p2d"}
TRANSFORMER = "transformer"


@dataclass(frozen=True)
class DASTSearchConfig(DiNTSSearchConfig):
    """DAST (Yang et al., MICCAI 2023): the DiNTS search (its grid, budget, losses and decoder) with the transformer in
    the op set; NAS_METHODS.md section 4 for the token grid."""
    # tokens per axis of every transformer: None [ours, default] = min(8, the level's extent) per axis, i.e. the
    # paper's 512 tokens (8^3) wherever a level is that large and every cell of a smaller level; an int: that grid at
    # every level (one clear error where a level is smaller)
    token_grid: Optional[int] = None
    num_heads: int = 8  # [paper]; every grid level's channels are rounded down to a multiple of it
    # [ours, the option] the DiNTS set's factorised (P3D / 2-D analogue) ops beside skip, conv, transformer
    factorised_ops: bool = False
    # [ours] the budget is a cap: Eq. 10's two-sided term pushed a search at sigma 0.8 to transformers on 41 of 55
    # edges (the costliest op: memory below sigma is pushed up), 1.51x nnU-Net's planned memory at the narrowest width
    # (BENCHMARKS.md); memory_penalty="two_sided" is the paper's literal reading
    memory_penalty: str = "upper"

    rules: ClassVar[dict] = {"token_grid": optional(integer(1)), "num_heads": integer(1), "factorised_ops": boolean}

    def op_options(self) -> dict:
        """The transformer's options (``OpSpec.options``), as the space and the fixed network take them."""
        return {"token_grid": self.token_grid, "num_heads": self.num_heads}


def choose_op_set(cfg: DASTSearchConfig, spatial_dims: int) -> str:
    table = DAST_FACTORISED_OP_SETS if cfg.factorised_ops else DAST_OP_SETS
    if spatial_dims not in table:
        raise ValueError(f"DAST searches 2-D or 3-D configurations, not {spatial_dims}-D ones.")
    return table[spatial_dims]


def _patch(planned, what: str):
    if planned is None or planned.patch_size is None:
        raise ValueError(f"DAST's {what} needs the configuration's patch size (its transformers fit their token grid "
                         f"to each level); build it through the search trainer or the export.")
    return list(planned.patch_size)


def build_supernet(cfg: DASTSearchConfig, op_set: str, input_channels: int, num_classes: int, spatial_dims: int,
                   deep_supervision: bool, planned=None):
    geometry = DAST.search_geometry(cfg, planned, spatial_dims)[0]
    return DiNTSNet(input_channels, num_classes, None, cfg.num_blocks, cfg.num_depths, spatial_dims, cfg.channel_mul,
                    op_set=op_set, strides=geometry.output_strides(cfg.num_depths), geometry=geometry,
                    deep_supervision=deep_supervision, recompute_norms=cfg.recompute_norms,
                    patch_size=_patch(planned, "search space"), op_options=cfg.op_options(),
                    channel_multiple=cfg.num_heads)


def check_search(net, cfg: DASTSearchConfig) -> None:
    """DiNTS's budget check, the grid levels' channels in multiples of the attention heads."""
    dints.check_search(net, cfg, channel_multiple=int(cfg.num_heads))


def genotype_config(genotype: GridGenotype) -> DASTSearchConfig:
    """The search config recorded in the genotype's provenance (the defaults where there is none)."""
    return DASTSearchConfig.from_dict(dict(genotype.provenance.get("search_config") or {}),
                                      source="DAST genotype provenance.search_config")


def fixed_network_kwargs(genotype: GridGenotype, channel_mul: float, base_channels: int = 32, planned=None) -> dict:
    cfg = genotype_config(genotype)
    kwargs = dints.fixed_network_kwargs(genotype, channel_mul, base_channels)
    kwargs.update(patch_size=_patch(planned, "fixed network"), op_options=cfg.op_options(),
                  channel_multiple=int(cfg.num_heads))
    return kwargs


def transformer_cells(genotype: GridGenotype):
    """``[(block, edge)]`` of the genotype's transformer cells."""
    return [(b, e) for b, row in enumerate(genotype.ops) for e, op in enumerate(row)
            if op == TRANSFORMER and genotype.arch_code_a[b, e]]


def plot_genotype(genotype: GridGenotype, path: str) -> str:
    from nnunet_nas.viz import plot_grid_genotype
    n = int(genotype.arch_code_a.sum())
    return plot_grid_genotype(genotype, path, marked_ops=(TRANSFORMER,),
                              title=f"DAST architecture ({n} active edges, {len(transformer_cells(genotype))} "
                                    f"transformer cells, marked T)")


def search_notes(net, cfg: DASTSearchConfig):
    from nnunet_nas.ops.transformer import resolve_token_grid
    space = net.supernet.space
    grids = ["level {}: {} map, {} token grid".format(
        d, "x".join(map(str, shape)), "x".join(map(str, resolve_token_grid(cfg.token_grid, len(shape), shape))))
        for d, shape in enumerate(space.feature_shapes)]
    return dints.search_notes(net, cfg) + [f"DAST transformers ({cfg.num_heads} heads): " + "; ".join(grids)]


# DiNTS's record (its arch params, weighting, regularisers, decoder, genotype, fixed network, pictures) with DAST's
# config, op sets, supernet builder, export kwargs, picture, notes and budget check
DAST = register_method(replace(
    dints.DINTS,
    name="dast",
    paper="Yang et al., DAST: Differentiable Architecture Search with Transformer for 3D Medical Image "
          "Segmentation, MICCAI 2023",
    config_class=DASTSearchConfig,
    default_op_sets=DAST_OP_SETS,
    choose_op_set=choose_op_set,
    build_supernet=build_supernet,
    fixed_network_kwargs=fixed_network_kwargs,
    plot_genotype=plot_genotype,
    search_notes=search_notes,
    check_search=check_search,
))

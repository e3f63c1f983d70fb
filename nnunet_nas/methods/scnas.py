"""SCNAS (Kim et al., MICCAI 2019): four searched cell types in a U-Net, stochastic two-operation sampling.

The record composes: the cell U-Net (:class:`~nnunet_nas.networks.scnas_net.SCNASNet` with ``genotype=None``),
:class:`~nnunet_nas.arch.params.CellArchParams` (alpha per cell type, edge and op), the pair-sampling
Gumbel-softmax weighting of Algorithm 1 (:class:`~nnunet_nas.arch.weighting.GumbelPairWeighting`), temperature
annealing (:class:`~nnunet_nas.strategies.temperature.TemperatureAnnealing`), no regulariser by default (the
architecture loss is the segmentation loss; ``memory_budget`` adds a memory term in nnU-Net's terms [ours]), the
per-edge discretisation below and :class:`~nnunet_nas.genotypes.cell.CellGenotype`.
"""

from dataclasses import dataclass, replace
from typing import ClassVar, Optional, Tuple

import torch

from nnunet_nas.arch.counted_memory import CountedCellMemory, attached_counted_memory, check_budget_reachable
from nnunet_nas.arch.memory import MEMORY_PENALTIES, budget_loss
from nnunet_nas.arch.params import CellArchParams, masked_op_probs, mean_entropy
from nnunet_nas.arch.weighting import GumbelPairWeighting
from nnunet_nas.config import SearchConfig
from nnunet_nas.config_rules import integer, number, one_of, optional
from nnunet_nas.convergence import separation_record
from nnunet_nas.discretize.cell import argmax_cell
from nnunet_nas.errors import ConfigError
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.geometry import Geometry, space_geometry
from nnunet_nas.networks.scnas_net import (CELL_TYPES, DEFAULT_OP_SETS, NUM_LEVELS, SCNASNet,
                                           narrowest_channel_mul)
from nnunet_nas.ops.catalog import op_names
from nnunet_nas.registry import SearchMethod, register_method
from nnunet_nas.spaces.cell import cell_edges, cell_num_nodes
from nnunet_nas.strategies.temperature import SCHEDULES, TemperatureAnnealing

HISTORY_KEYS = ("arch_entropy_alpha", "arch_separation", "arch_memory_ratio")
PAPER_EXPORT_SCALE = 68 / 48  # the paper retrains a 68-channel stem found with a 48-channel search


@dataclass(frozen=True)
class SCNASSearchConfig(SearchConfig):
    """SCNAS (Kim et al., MICCAI 2019), NAS_METHODS.md section 3 for the open points."""
    num_nodes: int = 4  # intermediate nodes per cell [paper]
    channel_mul: float = 1.5  # search width: stem = 32 * 1.5 = 48 channels [paper]
    # retrained width: None fits it to the memory nnU-Net planned [ours, default]; 2.125 (68 stem channels) is the
    # paper's FLOPs-matched retraining width
    export_channel_mul: Optional[float] = None
    data_split: Tuple[int, int] = (4, 1)  # weight : architecture cases [paper]
    warmup_fraction: float = 0.0  # [paper: Algorithm 1 updates alpha from the first step]
    weight_optimizer: str = "adam"  # [paper]
    # [ours] the paper prints lr 0.025 and betas "(0.1, 0.001)" for the search weights; we read the betas as a typo
    # of Adam's (0.9, 0.999) and use the paper's own retraining rate 3e-4 (Adam at 0.025 is far above what Adam
    # trains a conv net at); the literal reading: replace(cfg, weight_lr=0.025, weight_betas=(0.1, 0.001))
    weight_lr: Optional[float] = 3e-4
    weight_betas: Tuple[float, float] = (0.9, 0.999)
    arch_lr: float = 3e-3  # Adam [paper]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [paper]
    arch_weight_decay: float = 1e-3  # [DARTS; the paper gives none]
    # [ours] decoupled (AdamW's), not DARTS's L2-in-Adam: alpha's loss gradient is about 2e-4 RMS at tau > 1 (measured
    # on Hippocampus 2-D), which the L2 term 1e-3 * alpha equals at |alpha| 0.2: under it the logits' spread stayed at
    # 0.11-0.29 over 20 epochs (separation 0.02); decoupled, at the same gradient, it grew to 1.3 in 13 epochs
    # (separation 0.12; BENCHMARKS.md). Literal: arch_decoupled_weight_decay=False
    arch_decoupled_weight_decay: bool = True
    temperature_start: float = 10.0  # tau [ours: GDAS's public default, the paper gives none]
    temperature_end: float = 0.1
    temperature_schedule: str = "linear"  # or "exponential"
    # [ours; the paper has no memory term] sigma of a memory term in nnU-Net's terms, as DiNTS's default: the found
    # network at its export width (export_channel_mul, else the paper's 68 / 48 times the search width) counted by the
    # export's counter, as a share of nnU-Net's planned network; None: no term (the ratio is still logged)
    memory_budget: Optional[float] = None
    memory_penalty: str = "upper"  # a cap; "two_sided": Eq. 10 of DiNTS

    rules: ClassVar[dict] = {
        "num_nodes": integer(1), "channel_mul": number(0, lo_open=True), "temperature_start": number(0, lo_open=True),
        "temperature_end": number(0, lo_open=True), "temperature_schedule": one_of(SCHEDULES),
        "memory_budget": optional(number(0, lo_open=True)), "memory_penalty": one_of(MEMORY_PENALTIES),
    }

    def counted_export_width(self) -> float:
        """The width the search counts its memory at."""
        return float(self.export_channel_mul) if self.export_channel_mul is not None else \
            self.channel_mul * PAPER_EXPORT_SCALE

    def check_consistency(self, source: str) -> None:
        if self.temperature_start < self.temperature_end:
            raise ConfigError(f"{source}: temperature_start {self.temperature_start} is below temperature_end "
                              f"{self.temperature_end}; the Gumbel-softmax temperature anneals downwards (start >= "
                              f"end > 0).")


def output_strides(geometry: Geometry):
    """Deep supervision at every level, 0 .. 3 (nnU-Net's convention: one stride entry more than outputs)."""
    return geometry.output_strides(NUM_LEVELS + 1)


def build_supernet(cfg: SCNASSearchConfig, op_set: str, input_channels: int, num_classes: int, spatial_dims: int,
                   deep_supervision: bool, planned=None) -> SCNASNet:
    geometry = SCNAS.search_geometry(cfg, planned, spatial_dims)[0]  # the plan's first three down-samplings
    return SCNASNet(input_channels, num_classes, None, spatial_dims, cfg.channel_mul, num_nodes=cfg.num_nodes,
                    op_set=op_set, strides=output_strides(geometry), deep_supervision=deep_supervision,
                    geometry=geometry)


def genotype_geometry(genotype: CellGenotype) -> Geometry:
    """The geometry the genotype was searched in (isotropic for a genotype that records none)."""
    return space_geometry(genotype.geometry, genotype.spatial_dims, NUM_LEVELS + 1,
                          f"the genotype's geometry ({genotype.provenance.get('checkpoint', 'SCNAS genotype')})")


def build_arch_params(cfg: SCNASSearchConfig, supernet, op_set: str) -> CellArchParams:
    return CellArchParams(len(CELL_TYPES), len(cell_edges(cfg.num_nodes)), len(op_names(op_set)))


def make_strategies(cfg: SCNASSearchConfig):
    return [TemperatureAnnealing(cfg.temperature_start, cfg.temperature_end, cfg.temperature_schedule, per="epoch")]


def discretize(arch_state, op_set: str, provenance=None, cfg=None) -> CellGenotype:
    probs = masked_op_probs(arch_state["op_logits"].detach().float().cpu(), arch_state.get("alive_ops")).numpy()
    names = list(op_names(op_set))
    num_nodes = cell_num_nodes(probs.shape[1])
    return CellGenotype.from_edge_ops(op_set, {t: argmax_cell(probs[i], names, num_nodes)
                                               for i, t in enumerate(CELL_TYPES)}, num_nodes, provenance)


def count_export_memory(cfg: SCNASSearchConfig, build, input_channels: int, patch_size, reference
                        ) -> CountedCellMemory:
    """The export's counter over the supernet ``build(cfg)`` makes at the export width and the configuration's
    ``patch_size``, against nnU-Net's planned network's ``reference()`` elements (logged always; a term only with a
    ``memory_budget``)."""
    return CountedCellMemory.of_supernet(lambda: build(replace(cfg, channel_mul=cfg.counted_export_width())),
                                         input_channels, patch_size, reference(), CELL_TYPES)


def regularizers(net, cfg: SCNASSearchConfig):
    """None by default [paper]; with ``memory_budget`` the memory term of softmax(alpha) in nnU-Net's terms."""
    if cfg.memory_budget is None:
        return {}
    ratio = attached_counted_memory(net).ratio(net.arch.op_probs().to(torch.float64))
    return {"memory": budget_loss(ratio, cfg.memory_budget, cfg.memory_penalty)}


def check_search(net, cfg: SCNASSearchConfig) -> None:
    """A memory budget must be one some architecture of the space meets at the width the search counts."""
    if cfg.memory_budget is not None:
        check_budget_reachable(attached_counted_memory(net), cfg.memory_budget, cfg, narrowest_channel_mul())


@torch.no_grad()
def describe(net, cfg: SCNASSearchConfig):
    probs = net.arch.op_probs().float().cpu()
    entropy = mean_entropy(probs)
    counted = getattr(net, "export_memory", None)
    ratio = float("nan") if counted is None else float(counted.ratio(probs.to(torch.float64)))
    return {"arch_entropy_alpha": float(entropy), **separation_record(probs.numpy()), "arch_memory_ratio": ratio,
            "op_probs": probs.numpy().round(5).tolist()}


def fixed_network_kwargs(genotype: CellGenotype, channel_mul: float, base_channels: int = 32,
                         planned=None) -> dict:
    return {"genotype": genotype.to_dict(), "channel_mul": float(channel_mul), "base_channels": int(base_channels),
            "strides": output_strides(genotype_geometry(genotype))}


def search_notes(net, cfg: SCNASSearchConfig):
    edges = len(cell_edges(cfg.num_nodes))
    counted = attached_counted_memory(net)
    term = "no memory term (memory_budget sets one)" if cfg.memory_budget is None else \
        f"memory term: at most {cfg.memory_budget} of it" if cfg.memory_penalty == "upper" else \
        f"memory term: sigma {cfg.memory_budget} of it"
    return [f"SCNAS: 4 cell types x {edges} edges x {net.arch.op_logits.shape[-1]} ops; two sampled ops per edge per "
            f"step (Algorithm 1), temperature {cfg.temperature_start} -> {cfg.temperature_end} "
            f"({cfg.temperature_schedule}, per epoch)",
            f"memory: the found network at its export width channel_mul {cfg.counted_export_width():.4g} against "
            f"nnU-Net's planned network ({counted.reference / 1e6:.2f} M conv-output elements): this space spans "
            f"{counted.min_ratio():.2f}x to {counted.max_ratio():.2f}x; {term}"]


def plot_genotype(genotype: CellGenotype, path: str) -> str:
    from nnunet_nas.viz.cells import plot_cell_genotype
    return plot_cell_genotype(genotype, path, title="SCNAS cells")


def plot_history(history: dict, path: str, net, cfg: SCNASSearchConfig) -> str:
    from nnunet_nas.viz.cells import plot_cell_trajectories
    return plot_cell_trajectories(history, path, list(op_names(net.supernet.op_set)), list(CELL_TYPES))


SCNAS = register_method(SearchMethod(
    name="scnas",
    paper="Kim et al., Scalable Neural Architecture Search for 3D Medical Image Segmentation, MICCAI 2019",
    config_class=SCNASSearchConfig,
    genotype_class=CellGenotype,
    network_class=SCNASNet,
    default_op_sets=DEFAULT_OP_SETS,
    build_supernet=build_supernet,
    build_arch_params=build_arch_params,
    make_weighting=lambda cfg: GumbelPairWeighting(cfg.temperature_start),
    regularizers=regularizers,
    discretize=discretize,
    describe=describe,
    fixed_network_kwargs=fixed_network_kwargs,
    search_downsamplings=lambda cfg: NUM_LEVELS,
    genotype_patch_divisor=lambda genotype: genotype_geometry(genotype).divisor,
    history_keys=HISTORY_KEYS,
    make_strategies=make_strategies,
    kept_edges=CellGenotype.kept_edges,
    plot_genotype=plot_genotype,
    plot_history=plot_history,
    search_notes=search_notes,
    check_search=check_search,
    count_export_memory=count_export_memory,
    search_width_field="channel_mul",
))

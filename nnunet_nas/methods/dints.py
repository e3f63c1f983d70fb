"""DiNTS (He et al., CVPR 2021): multi-path topology and cell search on an L x D grid under a memory budget.

The record composes: the grid space (:class:`~nnunet_nas.networks.dints_net.DiNTSNet` with ``genotype=None``),
:class:`~nnunet_nas.arch.params.GridArchParams`, the edge-marginal x softmax weighting, the regularisers of
Eq. 5, 7 and 10 (``L_arch = L_seg + t/t_all * (L_alpha + L_eta + lambda L_tp + L_m)``, Eq. 11), the
topology-guaranteed decoder (Eq. 3-4) and :class:`~nnunet_nas.genotypes.grid.GridGenotype`.
"""

from dataclasses import dataclass, replace
from typing import ClassVar, List, Optional, Tuple

import numpy as np
import torch

from nnunet_nas.arch import grid_probs
from nnunet_nas.arch.params import GridArchParams
from nnunet_nas.arch.weighting import GridEdgeOpWeighting
from nnunet_nas.arch.counted_memory import CountedGridMemory, attached_counted_memory, check_budget_reachable
from nnunet_nas.arch.memory import MEMORY_PENALTIES, MEMORY_REFERENCES, budget_loss
from nnunet_nas.config import SearchConfig
from nnunet_nas.config_rules import boolean, integer, number, one_of, optional
from nnunet_nas.convergence import gate_separation, separation_record
from nnunet_nas.discretize.grid_path import decode_grid_codes
from nnunet_nas.errors import ConfigError
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.geometry import Geometry, space_geometry
from nnunet_nas.genotypes.monai_compat import from_monai_codes
from nnunet_nas.networks.dints_net import DiNTSNet, narrowest_channel_mul
from nnunet_nas.ops.catalog import op_names
from nnunet_nas.registry import SearchMethod, register_method
from nnunet_nas.spaces.grid import GRID_OP_SETS
from nnunet_nas.spaces.grid_topology import MAX_DEPTHS, MIN_DEPTHS

# the budget as a share of nnU-Net's planned network, the found network counted at its export width by the export's
# counter (arch/counted_memory.py); the other references are shares of the space's own architectures
NNUNET_REFERENCE = "nnunet"
BUDGET_REFERENCES = (NNUNET_REFERENCE,) + MEMORY_REFERENCES
HISTORY_KEYS = ("arch_entropy_alpha", "arch_entropy_eta", "arch_topology_loss", "arch_memory_ratio",
                "arch_discretization_gap", "arch_separation", "arch_edge_separation")


@dataclass(frozen=True)
class DiNTSSearchConfig(SearchConfig):
    """DiNTS (He et al., CVPR 2021)."""
    num_blocks: int = 12  # L [paper 4.1]
    num_depths: int = 4  # D [paper 4.1]
    channel_mul: float = 0.5  # search width: f = 32 * 2^i * mul [MONAI tutorial]
    # retrained width: None fits it to the memory nnU-Net planned for the base configuration [ours, default];
    # 2 * channel_mul is the paper's literal "twice the search filters" [paper 4.1]
    export_channel_mul: Optional[float] = None
    # sigma of Eq. 10, a share of memory_reference; None: 1.0 with "nnunet" (the found network at its export width
    # takes the memory nnU-Net planned) [ours], 0.8 with the others [paper]
    memory_budget: Optional[float] = None
    # [ours] "nnunet": nnU-Net's planned network, the found one counted at its export width; "max_discrete": the
    # space's largest discrete architecture; "paper": Eq. 9's M_a. See documentation/dints.md, memory budget
    memory_reference: str = NNUNET_REFERENCE
    # Eq. 10 holds the ratio at sigma from both sides [paper]; "upper": only memory above sigma costs (a cap)
    memory_penalty: str = "two_sided"
    topology_weight: float = 0.001  # lambda of Eq. 11 [paper]
    warmup_fraction: float = 0.5  # [paper: 11k of 21k iterations]
    arch_lr: float = 0.008  # Adam [paper 4.1]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [MONAI tutorial]
    arch_weight_decay: float = 0.0  # [paper]
    arch_grad_clip: Optional[float] = 0.5  # [Auto3DSeg]
    recompute_norms: bool = True  # [ours] search-memory saving, see spaces/grid.py

    rules: ClassVar[dict] = {
        "num_blocks": integer(1), "num_depths": integer(MIN_DEPTHS, MAX_DEPTHS), "channel_mul": number(0, lo_open=True),
        "memory_budget": optional(number(0, lo_open=True)), "memory_reference": one_of(BUDGET_REFERENCES),
        "memory_penalty": one_of(MEMORY_PENALTIES), "topology_weight": number(0), "recompute_norms": boolean,
    }

    @property
    def sigma(self) -> float:
        """The memory budget: ``memory_budget``, or its default for the reference."""
        if self.memory_budget is not None:
            return float(self.memory_budget)
        return 1.0 if self.memory_reference == NNUNET_REFERENCE else 0.8

    def counted_export_width(self) -> Optional[float]:
        """The width the search counts its memory at (``memory_reference="nnunet"``): ``export_channel_mul``, else
        the paper's twice the search width [paper 4.1]; None under the other references."""
        if self.memory_reference != NNUNET_REFERENCE:
            return None
        return float(self.export_channel_mul) if self.export_channel_mul is not None else 2.0 * self.channel_mul


def build_supernet(cfg: DiNTSSearchConfig, op_set: str, input_channels: int, num_classes: int, spatial_dims: int,
                   deep_supervision: bool, planned=None):
    geometry = DINTS.search_geometry(cfg, planned, spatial_dims)[0]  # the plan's first D down-samplings
    return DiNTSNet(input_channels, num_classes, None, cfg.num_blocks, cfg.num_depths, spatial_dims, cfg.channel_mul,
                    op_set=op_set, strides=geometry.output_strides(cfg.num_depths), geometry=geometry,
                    deep_supervision=deep_supervision, recompute_norms=cfg.recompute_norms)


def build_arch_params(cfg: DiNTSSearchConfig, supernet, op_set: str) -> GridArchParams:
    return GridArchParams(cfg.num_blocks, cfg.num_depths, len(op_names(op_set)))


def count_export_memory(cfg: DiNTSSearchConfig, build, input_channels: int, patch_size, reference
                        ) -> Optional[CountedGridMemory]:
    """Under ``memory_reference="nnunet"``: the export's counter over the supernet ``build(cfg)`` makes at the
    export width, at the configuration's ``patch_size``, against nnU-Net's planned network's ``reference()``
    elements."""
    width = cfg.counted_export_width()
    if width is None:
        return None
    return CountedGridMemory.of_supernet(lambda: build(replace(cfg, channel_mul=width)), input_channels, patch_size,
                                         reference())


def memory_ratio(net, cfg: DiNTSSearchConfig, edge_marginals, op_probs):
    """The architecture's memory as a share of ``cfg.memory_reference``."""
    if cfg.memory_reference == NNUNET_REFERENCE:
        return attached_counted_memory(net).ratio(edge_marginals, op_probs)
    return net.supernet.memory_model.ratio(edge_marginals, op_probs, cfg.memory_reference)


def max_memory_ratio(net, cfg: DiNTSSearchConfig) -> float:
    """The largest ratio an architecture of the space reaches."""
    if cfg.memory_reference == NNUNET_REFERENCE:
        return attached_counted_memory(net).max_ratio()
    return net.supernet.memory_model.max_ratio(cfg.memory_reference)


def regularizers(net, cfg: DiNTSSearchConfig):
    """Unramped terms of Eq. 11: op and pattern entropies (Eq. 5), topology loss (Eq. 7, times lambda), memory
    (Eq. 10)."""
    arch = net.arch
    eta = grid_probs.pattern_probs(arch.edge_logits)
    memory = budget_loss(memory_ratio(net, cfg, grid_probs.edge_marginals(arch.edge_logits), arch.op_probs()),
                         cfg.sigma, cfg.memory_penalty)
    return {"entropy_alpha": grid_probs.entropy_loss_ops(arch.op_logits),
            "entropy_eta": grid_probs.entropy_loss_patterns(eta),
            "topology": cfg.topology_weight * grid_probs.topology_loss(eta, net.supernet.num_depths),
            "memory": memory}


def discretize(arch_state, op_set: str, provenance=None, cfg=None) -> GridGenotype:
    """Topology-guaranteed discretisation (Eq. 3-4) of ``arch.edge_logits`` / ``arch.op_logits``."""
    node_a, code_a, code_c = decode_grid_codes(arch_state["edge_logits"],
                                               _alive_logits(arch_state["op_logits"], arch_state.get("alive_ops")))
    return from_monai_codes(node_a, code_a, code_c, op_set=op_set, provenance=provenance, source="decoded search")


def _alive_logits(op_logits: torch.Tensor, alive) -> torch.Tensor:
    """Pruned ops below every alive one (finite: the decoder refuses non-finite logits)."""
    op_logits = op_logits.detach().float().cpu()
    if alive is None:
        return op_logits
    return torch.where(alive.bool().cpu(), op_logits, op_logits.min() - 1.0)


@torch.no_grad()
def describe(net, cfg: DiNTSSearchConfig):
    arch = net.arch
    edge_logits = arch.edge_logits.detach().float().cpu()
    op_probs = arch.op_probs().detach().float().cpu()
    eta = grid_probs.pattern_probs(edge_logits)
    _, code_a, _ = decode_grid_codes(edge_logits, _alive_logits(arch.op_logits, arch.alive_ops))
    ratio = float(memory_ratio(net, cfg, grid_probs.edge_marginals(edge_logits).to(torch.float64),
                               op_probs.to(torch.float64)))
    return {
        "arch_entropy_alpha": float(grid_probs.entropy_loss_ops(arch.op_logits.detach().float().cpu())),
        "arch_entropy_eta": float(grid_probs.entropy_loss_patterns(eta)),
        "arch_topology_loss": float(grid_probs.topology_loss(eta, net.supernet.num_depths)),
        "arch_memory_ratio": ratio,
        "arch_discretization_gap": float(grid_probs.discretisation_gap(edge_logits, code_a)),
        **separation_record(op_probs.numpy(), gate_separation(torch.sigmoid(edge_logits).numpy())),
        "edge_probs": torch.sigmoid(edge_logits).numpy().round(5).tolist(),
        "op_probs": op_probs.numpy().round(5).tolist(),
    }


def genotype_geometry(genotype: GridGenotype) -> Geometry:
    """The geometry the genotype was searched in (isotropic for a genotype that records none)."""
    return space_geometry(genotype.geometry, genotype.spatial_dims, genotype.num_depths + 1,
                          f"the genotype's geometry ({genotype.provenance.get('checkpoint', 'grid genotype')})")


def fixed_network_kwargs(genotype: GridGenotype, channel_mul: float, base_channels: int = 32,
                         planned=None) -> dict:
    """``arch_kwargs`` of an exported grid architecture: the genotype (with the geometry it was searched in) and
    deep supervision at every decoder resolution, stages 0 .. k + 1 (k = deepest active level of the last block),
    in nnU-Net's ``strides`` convention."""
    deepest = int(np.flatnonzero(genotype.node_a[-1]).max())
    return {"genotype": genotype.to_dict(), "channel_mul": float(channel_mul), "base_channels": int(base_channels),
            "strides": genotype_geometry(genotype).output_strides(deepest + 2)}


def check_search(net, cfg: DiNTSSearchConfig, channel_multiple: int = 1) -> None:
    """The memory budget must be one the space can reach with a reference that is a share of the space's own
    architectures: sigma in (0, max ratio]; with nnU-Net's as reference, at least the least any architecture of the
    space counts (a budget above the space is said in the search's notes). ``channel_multiple``: what the grid
    levels' channels are rounded down to a multiple of (the narrowest width the network builds at depends on it)."""
    if cfg.memory_reference == NNUNET_REFERENCE:
        check_budget_reachable(attached_counted_memory(net), cfg.sigma, cfg,
                               narrowest_channel_mul(channel_multiple=channel_multiple))
        return
    attainable = net.supernet.memory_model.max_ratio(cfg.memory_reference)
    if cfg.sigma > attainable * (1 + 1e-9):
        raise ConfigError(f"{type(cfg).__name__}: memory_budget={cfg.sigma} is above the largest memory ratio "
                          f"this space can reach with memory_reference={cfg.memory_reference!r}: the attainable range "
                          f"is (0, {attainable:.3f}]. Above it the memory term pushes every search towards the "
                          f"densest, costliest architecture. Choose a budget in that range (see "
                          f"documentation/dints.md, memory budget).")


def search_notes(net, cfg: DiNTSSearchConfig) -> List[str]:
    """What the memory budget means for this search, for its log."""
    if cfg.memory_reference != NNUNET_REFERENCE:
        return [f"memory budget: sigma {cfg.sigma} of memory_reference={cfg.memory_reference!r} (the space's own "
                f"architectures; the export then fits the width to nnU-Net's plan)"]
    counted, width = attached_counted_memory(net), cfg.counted_export_width()
    notes = [f"memory budget: sigma {cfg.sigma} of nnU-Net's planned network ({counted.reference / 1e6:.2f} M "
             f"conv-output elements at the configuration's patch), the found network counted at its export width "
             f"channel_mul {width:g}; the architectures of this space take {counted.min_ratio():.2f}x to "
             f"{counted.max_ratio():.2f}x"]
    if cfg.sigma > counted.max_ratio():
        favours = " (the two-sided term favours the largest architectures)" if cfg.memory_penalty == "two_sided" else ""
        notes.append(f"note: the budget is above every architecture of this space at channel_mul {width:g}: it does "
                     f"not bind{favours}; a wider search (channel_mul) or a smaller memory_budget makes it bind. The "
                     f"export widens the found network to nnU-Net's memory.")
    return notes


def plot_genotype(genotype: GridGenotype, path: str) -> str:
    from nnunet_nas.viz import plot_grid_genotype
    return plot_grid_genotype(genotype, path, title=f"DiNTS architecture ({int(genotype.arch_code_a.sum())} "
                                                    f"active edges)")


def plot_history(history: dict, path: str, net, cfg: DiNTSSearchConfig) -> str:
    from nnunet_nas.viz import plot_arch_trajectories
    h = dict(history)
    h["op_names"] = list(op_names(net.supernet.space.op_set_name))
    h["sigma"] = cfg.sigma
    h["max_ratio"] = max_memory_ratio(net, cfg)
    for ours, theirs in (("arch_discretization_gap", "gap"), ("arch_memory_ratio", "memory_ratio"),
                         ("arch_topology_loss", "topology_loss"), ("arch_entropy_alpha", "entropy_alpha"),
                         ("arch_entropy_eta", "entropy_eta")):
        h[theirs] = h.get(ours, [])
    return plot_arch_trajectories(h, path)


DINTS = register_method(SearchMethod(
    name="dints",
    paper="He et al., DiNTS: Differentiable Neural Network Topology Search for 3D Medical Image Segmentation, "
          "CVPR 2021",
    config_class=DiNTSSearchConfig,
    genotype_class=GridGenotype,
    network_class=DiNTSNet,
    default_op_sets=GRID_OP_SETS,
    build_supernet=build_supernet,
    build_arch_params=build_arch_params,
    make_weighting=lambda cfg: GridEdgeOpWeighting(),
    regularizers=regularizers,
    discretize=discretize,
    describe=describe,
    fixed_network_kwargs=fixed_network_kwargs,
    search_downsamplings=lambda cfg: cfg.num_depths,
    genotype_patch_divisor=lambda genotype: genotype_geometry(genotype).divisor,
    history_keys=HISTORY_KEYS,
    kept_edges=lambda genotype: np.asarray(genotype.arch_code_a, dtype=bool),  # [L, E], op_logits' order
    plot_genotype=plot_genotype,
    plot_history=plot_history,
    check_search=check_search,
    search_notes=search_notes,
    count_export_memory=count_export_memory,
    search_width_field="channel_mul",
))

"""IAC (implantable adaptive cells) and, with the JSD stability strategy, IAC-LTH: searched cells implanted into the
skip connections of a trained nnU-Net U-Net (NAS_METHODS.md sections 1.3 and 2.2).

The record composes: the implanted network (:class:`~nnunet_nas.networks.iac_net.IACUNet` with ``genotype=None``,
built around the network nnU-Net planned for the searched configuration), PC-DARTS architecture parameters (alpha per
cell type, edge and op; beta per cell type and edge: :class:`~nnunet_nas.arch.params.CellEdgeArchParams`), the
edge-normalised softmax weighting (:class:`~nnunet_nas.arch.weighting.EdgeNormalisedWeighting`), no regulariser, the
PC-DARTS discretisation below and :class:`~nnunet_nas.genotypes.cell.CellGenotype`. The search starts from a trained
model of the planned network (``trained_host``: the trainer finds, loads and freezes it); the export keeps nnU-Net's
width for the host and fits the cells' width so that host and cells take at most :data:`IAC_MEMORY_SHARE` times the
conv feature maps of nnU-Net's planned network.
"""

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import numpy as np
import torch

from nnunet_nas.arch.params import CellEdgeArchParams, masked_op_probs, mean_entropy
from nnunet_nas.arch.weighting import EdgeNormalisedWeighting
from nnunet_nas.config import SearchConfig
from nnunet_nas.config_rules import boolean, integer, number, one_of, optional
from nnunet_nas.convergence import separation_index, separation_record
from nnunet_nas.discretize.cell import edge_scores, top_edges_cell
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.networks.iac_net import DEFAULT_OP_SETS, IACUNet, iac_cell_types, iac_layout
from nnunet_nas.ops.catalog import get_op_set
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import SearchMethod, register_method
from nnunet_nas.spaces.cell import cell_edges, cell_num_nodes, node_softmax

HISTORY_KEYS = ("arch_entropy_alpha", "arch_entropy_beta", "arch_separation", "arch_edge_separation")


IAC_MODES = ("fusion", "skip_only")
# [ours] the exported host plus cells, as a share of nnU-Net's planned network (the export's counter: conv outputs of
# one forward): the cells add at most as much as nnU-Net's whole network. Cells as wide as the skips (the paper) added
# 4.1-5.3x on Hippocampus 2d and 3d_fullres, and the cells' 1x1 output convs alone about 0.35-0.45x (their floor)
IAC_MEMORY_SHARE = 2.0


@dataclass(frozen=True)
class IACSearchConfig(SearchConfig):
    """IAC (implantable adaptive cells) and IAC-LTH: NAS_METHODS.md sections 1.3 and 2.2 for the open points; PC-DARTS
    search settings where the IAC papers give none."""
    num_nodes: int = 4  # intermediate nodes per cell [PC-DARTS]
    partial_channels: int = 4  # K of PC-DARTS: the mixed ops see 1/K of the channels during the search
    cell_channel_mul: float = 1.0  # cell width / skip channels, during the search [NAS_METHODS 1.3]
    # width of the exported cells / skip channels; None: fitted so that host plus cells take at most IAC_MEMORY_SHARE
    # times nnU-Net's planned network [ours]; 1.0: cells as wide as the skips [NAS_METHODS 1.3]. The host keeps
    # nnU-Net's width
    export_channel_mul: Optional[float] = None
    mode: str = "fusion"  # the cell reads (encoder skip, up-sampled decoder feature); "skip_only": (skip, skip)
    shared_cell: bool = True  # one genotype for every skip level; False: one per level
    edges_per_node: int = 2  # kept incoming edges per node at discretisation [PC-DARTS]
    # [ours, P-DARTS's cap on skip connections] at most this many parameter-free ops (skip, pooling) per discretised
    # cell; the weakest beyond it take their best op with parameters. None: no cap
    max_parameter_free_ops: Optional[int] = 2
    data_split: Tuple[int, int] = (1, 1)  # [PC-DARTS train_portion 0.5]
    warmup_fraction: float = 0.075  # [PC-DARTS: 15 of 200 epochs without architecture steps]
    # [ours] the weights are nnU-Net's SGD (its lr 0.01, momentum 0.99, poly); PC-DARTS trains its supernet with SGD
    # lr 0.1, momentum 0.9, cosine, which nnU-Net's loop does not offer
    arch_lr: float = 6e-4  # Adam [PC-DARTS]
    arch_betas: Tuple[float, float] = (0.5, 0.999)  # [PC-DARTS]
    arch_weight_decay: float = 1e-3  # [PC-DARTS]
    # [ours] decoupled, not PC-DARTS's L2-in-Adam: behind the zero-initialised cell output alpha's loss gradient is
    # about 7e-5 RMS (measured on Hippocampus 2-D), which PC-DARTS's L2 term 1e-3 * alpha equals at |alpha| 0.07:
    # every logit stayed within 0.15 of zero and alpha never separated. Literal: arch_decoupled_weight_decay=False
    arch_decoupled_weight_decay: bool = True

    rules: ClassVar[dict] = {
        "num_nodes": integer(1), "partial_channels": integer(1), "cell_channel_mul": number(0, lo_open=True),
        "mode": one_of(IAC_MODES), "shared_cell": boolean, "edges_per_node": integer(1),
        "max_parameter_free_ops": optional(integer(0)),
    }


def _require_planned(planned: Optional[PlannedNetwork]) -> PlannedNetwork:
    if planned is None:
        raise ValueError("IAC builds on the network nnU-Net planned for the configuration; none was given.")
    return planned


def build_supernet(cfg: IACSearchConfig, op_set: str, input_channels: int, num_classes: int, spatial_dims: int,
                   deep_supervision: bool, planned: Optional[PlannedNetwork] = None) -> IACUNet:
    planned = _require_planned(planned)
    return IACUNet(input_channels, num_classes, planned.class_name, planned.kwargs, planned.requires_import,
                   op_set=op_set, num_nodes=cfg.num_nodes, cell_channel_mul=cfg.cell_channel_mul, mode=cfg.mode,
                   shared_cell=cfg.shared_cell, partial_channels=cfg.partial_channels,
                   deep_supervision=deep_supervision, geometry=IAC.search_geometry(cfg, planned, spatial_dims)[0])


def build_arch_params(cfg: IACSearchConfig, supernet: IACUNet, op_set: str) -> CellEdgeArchParams:
    return CellEdgeArchParams(len(supernet.cell_types), len(cell_edges(cfg.num_nodes)),
                              len(get_op_set(op_set).ops))


def discretize(arch_state, op_set: str, provenance=None, cfg: Optional[IACSearchConfig] = None) -> CellGenotype:
    cfg = cfg if cfg is not None else IACSearchConfig()
    arch_state = CellEdgeArchParams.upgrade_state(dict(arch_state))
    probs = masked_op_probs(arch_state["op_logits"].detach().float().cpu(), arch_state.get("alive_ops")).numpy()
    num_nodes = cell_num_nodes(probs.shape[1])
    edge_weights = node_softmax(arch_state["edge_norm_logits"].detach().float().cpu(), num_nodes).numpy()
    types = iac_cell_types(probs.shape[0], probs.shape[0] == 1, cfg.mode)
    return CellGenotype.from_edge_ops(op_set, {t: top_edges_cell(probs[i], edge_weights[i], op_set, num_nodes,
                                                                  cfg.edges_per_node, cfg.max_parameter_free_ops)
                                               for i, t in enumerate(types)}, num_nodes, provenance)


def decision_distributions(probs: np.ndarray, edge_weights: np.ndarray, names, num_nodes: int, keep: int):
    """What the discretiser decides on: ``(op distributions [T, E, N], separation of each edge choice)``: per edge
    softmax(alpha) over the ops other than ``zero`` (the op it keeps), and per node with more than ``keep`` incoming
    edges the separation of its edge scores (:func:`~nnunet_nas.discretize.cell.edge_scores`, beta included)
    normalised over them, of which it keeps ``keep``."""
    ops = np.array(probs, dtype=np.float64, copy=True)
    if "zero" in names:
        ops[..., list(names).index("zero")] = 0.0
    ops /= np.clip(ops.sum(axis=-1, keepdims=True), 1e-12, None)
    choices = []
    for t in range(probs.shape[0]):
        scores, start = edge_scores(probs[t], edge_weights[t], names), 0
        for node in range(num_nodes):
            node_scores = scores[start:start + node + 2]
            if len(node_scores) > keep:
                choices.append(separation_index(node_scores / max(node_scores.sum(), 1e-12), keep))
            start += node + 2
    return ops, (np.asarray(choices) if choices else np.ones(1))  # no node with a choice: nothing undecided


@torch.no_grad()
def describe(net, cfg: IACSearchConfig):
    probs = net.arch.op_probs().float().cpu()
    edges = node_softmax(net.arch.edge_norm_logits.float().cpu(), cfg.num_nodes)
    # beta: the entropies of the node softmaxes sum over a cell's edges; reported per node
    names = [o.name for o in get_op_set(net.supernet.op_set).ops]
    return {"arch_entropy_alpha": float(mean_entropy(probs)),
            "arch_entropy_beta": float(mean_entropy(edges) / cfg.num_nodes),
            **separation_record(*decision_distributions(probs.numpy(), edges.numpy(), names, cfg.num_nodes,
                                                        cfg.edges_per_node)),
            "op_probs": probs.numpy().round(5).tolist(), "edge_weights": edges.numpy().round(5).tolist()}


def fixed_network_kwargs(genotype: CellGenotype, channel_mul: Optional[float],
                         planned: Optional[PlannedNetwork] = None) -> dict:
    """The implanted network's ``arch_kwargs``: the planned host, the genotype (which names mode and sharing), the
    cell width relative to each skip (None: 1) and the trained host's checkpoint, loaded when nnU-Net builds it for
    fine-tuning."""
    planned = _require_planned(planned)
    mode, shared = iac_layout(genotype.cell_types)
    return {"host_class": planned.class_name, "host_kwargs": dict(planned.kwargs),
            "host_kwargs_requires_import": list(planned.requires_import), "genotype": genotype.to_dict(),
            "cell_channel_mul": 1.0 if channel_mul is None else float(channel_mul), "mode": mode,
            "shared_cell": shared, "strides": [list(s) for s in planned.kwargs["strides"]],
            "host_checkpoint": planned.checkpoint}


def search_notes(net, cfg: IACSearchConfig):
    sn = net.supernet
    return [f"IAC: {len(sn.cells)} cells implanted into the skips of the trained {sn.host_class.rsplit('.', 1)[-1]} "
            f"({'one shared genotype' if cfg.shared_cell else 'one genotype per level'}, mode {cfg.mode}), "
            f"{len(cell_edges(cfg.num_nodes))} edges x {net.arch.op_logits.shape[-1]} ops, partial channels "
            f"K={cfg.partial_channels}, edge normalisation; host frozen"]


def plot_genotype(genotype: CellGenotype, path: str) -> str:
    from nnunet_nas.viz.cells import plot_cell_genotype
    return plot_cell_genotype(genotype, path, title="IAC cell(s), implanted into every skip connection")


def plot_history(history: dict, path: str, net, cfg: IACSearchConfig) -> str:
    from nnunet_nas.viz.cells import plot_cell_trajectories
    return plot_cell_trajectories(history, path, [o.name for o in get_op_set(net.supernet.op_set).ops],
                                  list(net.supernet.cell_types))


def plot_supernet(supernet: IACUNet, path: str) -> str:
    from nnunet_nas.viz.cells import plot_implanted_cells
    return plot_implanted_cells(list(supernet.encoder.output_channels[:-1]), list(supernet.cell_types), path)


IAC = register_method(SearchMethod(
    name="iac",
    paper="Benedykciuk et al., implantable adaptive cells (IAC, arXiv 2405.03420; IAC-LTH with JSD stability "
          "pruning, arXiv 2604.14849)",
    config_class=IACSearchConfig,
    genotype_class=CellGenotype,
    network_class=IACUNet,
    default_op_sets=DEFAULT_OP_SETS,
    build_supernet=build_supernet,
    build_arch_params=build_arch_params,
    make_weighting=lambda cfg: EdgeNormalisedWeighting(),
    regularizers=lambda net, cfg: {},
    discretize=discretize,
    describe=describe,
    fixed_network_kwargs=fixed_network_kwargs,
    search_downsamplings=None,
    genotype_patch_divisor=lambda genotype: 1,
    history_keys=HISTORY_KEYS,
    kept_edges=CellGenotype.kept_edges,
    export_memory_share=IAC_MEMORY_SHARE,
    trained_host=True,
    plot_genotype=plot_genotype,
    plot_history=plot_history,
    plot_supernet=plot_supernet,
    search_notes=search_notes,
    search_width_field="cell_channel_mul",
))

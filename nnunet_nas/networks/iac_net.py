"""IAC: adaptive cells implanted into the skip connections of an nnU-Net U-Net (NAS_METHODS.md 1.3, [ours] where
the IAC papers are silent).

The host is the network nnU-Net planned for a configuration, built from the plans' architecture block by
nnU-Net's own ``get_network_from_plans``: any dynamic_network_architectures U-Net whose ``encoder`` returns its
skips and whose decoder is a ``UNetDecoder`` (PlainConvUNet, ResidualEncoderUNet, the ResEnc presets). At decoder
stage ``s`` nnU-Net concatenates the up-sampled feature ``U`` with the encoder skip ``E`` of that level; here the
skip becomes ``E + out(cell(E, U))`` ("fusion", the default) or ``E + out(cell(E, E))`` ("skip_only"). ``cell`` is
the DARTS cell of :mod:`nnunet_nas.spaces.cell` (a searchable one, or fixed by a genotype) at ``cell_channel_mul``
times the skip's channels; ``out`` is a 1x1 conv back to the skip's channels, initialised to zero, so an implanted
network computes exactly its host's function until training moves it. One cell per skip level; one shared
genotype (cell type ``"fusion"``) by default, one per level (``"fusion_0"`` finest ...) as the option. A searchable
cell may run its mixed ops on 1/K of the channels (``partial_channels``, PC-DARTS).

The host's modules keep the host's names (``encoder.*``, ``decoder.*``), so a trained host's weights load by name
(:meth:`IACUNet.load_host_weights`) and :meth:`IACUNet.host_parameters` are what a search freezes.

Fine-tuning starts from the trained host: an exported configuration names the host's checkpoint
(``host_checkpoint``), and :meth:`IACUNet.initialize`, which nnU-Net calls on every network it builds for training
(``get_network_from_plans(..., allow_init=True)``), loads it; the cells start with their zero output, so the
fine-tuned network starts as the trained host. nnU-Net's ``-pretrained_weights`` cannot do this: it requires every
key of the new network in the old checkpoint and never transfers the segmentation heads.
"""

from typing import List, Optional, Sequence

import torch
from torch import nn

from nnunet_nas.arch.weighting import EdgeNormalisedWeights, SampledOpWeights
from nnunet_nas.errors import ConfigError, InputFileError, PlansError
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.genotypes.schema import GenotypeError
from nnunet_nas.geometry import space_geometry
from nnunet_nas.nnunet.host import host_to_load
from nnunet_nas.ops.catalog import get_op_set
from nnunet_nas.ops.conv import conv_nd
from nnunet_nas.spaces.cell import Cell

MODES = ("fusion", "skip_only")
DEFAULT_OP_SETS = {2: "darts_2d", 3: "darts_3d"}


def iac_cell_types(num_levels: int, shared: bool, mode: str = "fusion") -> List[str]:
    """Cell types of an IAC genotype, named by the cell's inputs: one shared type (``"fusion"``), or one per skip
    level, finest first (``"fusion_0"``, ``"fusion_1"`` ...); ``"skip_only"`` likewise."""
    return [mode] if shared else [f"{mode}_{level}" for level in range(num_levels)]


def iac_layout(cell_types: Sequence[str]):
    """``(mode, shared)`` of an IAC genotype from its cell type names (:func:`iac_cell_types`)."""
    mode = next((m for m in MODES if cell_types and cell_types[0].startswith(m)), None)
    if mode is None:
        raise GenotypeError(f"cell types {list(cell_types)} are not an IAC genotype's (expected {MODES[0]!r} or "
                         f"'{MODES[0]}_0', '{MODES[0]}_1', ..., or the same with {MODES[1]!r}).")
    return mode, list(cell_types) == [mode]


def build_host(host_class: str, host_kwargs: dict, host_kwargs_requires_import: Sequence[str], input_channels: int,
               num_classes: int, deep_supervision: bool) -> nn.Module:
    """The planned U-Net, built (and initialised) exactly as nnU-Net builds it from the plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    host = get_network_from_plans(host_class, host_kwargs, list(host_kwargs_requires_import), input_channels,
                                  num_classes, allow_init=True, deep_supervision=deep_supervision)
    decoder = getattr(host, "decoder", None)
    if not (hasattr(host, "encoder") and all(hasattr(decoder, a) for a in ("transpconvs", "stages", "seg_layers"))):
        raise PlansError(f"IAC needs a U-Net whose encoder returns its skips and whose decoder is "
                         f"dynamic_network_architectures' UNetDecoder (PlainConvUNet, ResidualEncoderUNet); "
                         f"{host_class} is not one.")
    return host


class IACUNet(nn.Module):
    """A host U-Net with one IAC per skip level; ``genotype=None`` builds searchable cells (``forward(x, weights)``
    with op weights ``[cell types, edges, ops]``), a :class:`CellGenotype` fixed ones."""

    def __init__(self, input_channels: int, num_classes: int, host_class: str, host_kwargs: dict,
                 host_kwargs_requires_import: Sequence[str] = (), genotype=None, op_set: Optional[str] = None,
                 num_nodes: int = 4, cell_channel_mul: float = 1.0, mode: str = "fusion", shared_cell: bool = True,
                 partial_channels: int = 1, deep_supervision: bool = False, strides=None,
                 host_checkpoint: Optional[str] = None, geometry=None, **unused):
        super().__init__()
        if unused:
            raise TypeError(f"IACUNet got unexpected arguments {sorted(unused)}.")
        if mode not in MODES:
            raise ConfigError(f"IACUNet: mode {mode!r} is not one of {MODES}.")
        self._kwargs = dict(input_channels=input_channels, num_classes=num_classes, host_class=host_class,
                            host_kwargs=host_kwargs, host_kwargs_requires_import=list(host_kwargs_requires_import),
                            genotype=genotype, op_set=op_set, num_nodes=num_nodes, cell_channel_mul=cell_channel_mul,
                            mode=mode, shared_cell=shared_cell, partial_channels=partial_channels,
                            deep_supervision=deep_supervision, strides=strides, host_checkpoint=host_checkpoint,
                            geometry=geometry)
        host = build_host(host_class, host_kwargs, host_kwargs_requires_import, input_channels, num_classes,
                          deep_supervision)
        self.encoder, self.decoder = host.encoder, host.decoder
        self.strides = [list(st) for st in host_kwargs["strides"]]  # nnU-Net's deep-supervision convention
        if strides is not None and [list(st) for st in strides] != self.strides:
            raise PlansError(f"IACUNet: strides {strides} differ from the host's {self.strides}.")
        self.host_checkpoint, self.host_class = host_checkpoint, host_class
        dims = 3 if issubclass(host.encoder.conv_op, nn.Conv3d) else 2
        skip_channels = list(host.encoder.output_channels[:-1])  # per level, finest first; the bottleneck has none
        if genotype is not None:  # its cell types say mode and sharing
            genotype = genotype if isinstance(genotype, CellGenotype) else CellGenotype.from_dict(genotype)
            mode, shared_cell = iac_layout(genotype.cell_types)
        self.cell_types = iac_cell_types(len(skip_channels), shared_cell, mode)
        if genotype is not None:
            genotype.validate("IACUNet genotype", self.cell_types)
            if genotype.spatial_dims != dims:
                raise GenotypeError(f"IACUNet: a {genotype.spatial_dims}-D genotype for a {dims}-D host.")
            op_set, num_nodes = genotype.op_set, genotype.num_nodes
            geometry = genotype.geometry  # None for a genotype of 0.1: its cells were isotropic
        op_set = op_set or DEFAULT_OP_SETS[dims]
        if get_op_set(op_set).spatial_dims != dims:
            raise ConfigError(f"IACUNet: op set {op_set!r} is not {dims}-D like the host.")
        self.genotype, self.mode, self.op_set = genotype, mode, op_set
        # the host's plan, whose kernel at each level the cells' ops follow (None: isotropic cells, as before 0.2)
        self.geometry = None if geometry is None else space_geometry(geometry, dims, len(host_kwargs["strides"]),
                                                                     "IACUNet geometry")
        self.cells, self.outs = nn.ModuleList(), nn.ModuleList()
        for level, c in enumerate(skip_channels):
            cell_type = self.cell_types[0 if shared_cell else level]
            k = partial_channels if genotype is None else 1
            width = max(2 * k, k * int(round(c * cell_channel_mul / k)))  # a multiple of K (PC-DARTS)
            ops = None if genotype is None else genotype.edge_ops(cell_type)
            self.cells.append(Cell(op_set, "normal", [c, c], width, num_nodes, (0, 0), ops, partial_channels=k,
                                   planned_kernel=None if self.geometry is None else self.geometry.kernels[level]))
            out = conv_nd(dims)(width, c, 1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.outs.append(out)
        self.level_type = [0 if shared_cell else level for level in range(len(skip_channels))]

    def forward(self, x: torch.Tensor, weights=None):
        if self.genotype is None and weights is None:
            raise ValueError("IACUNet: searchable cells need op weights [cell types, edges, ops].")
        active = edge_weights = None
        if isinstance(weights, SampledOpWeights):
            weights, active = weights.weights, weights.active
        elif isinstance(weights, EdgeNormalisedWeights):
            weights, edge_weights = weights.ops, weights.edges
        skips = self.encoder(x)
        dec = self.decoder
        lres, outputs = skips[-1], []
        for s, stage in enumerate(dec.stages):
            up = dec.transpconvs[s](lres)
            level = len(skips) - 2 - s
            skip, t = skips[level], self.level_type[level]
            fused = self.cells[level](skip, up if self.mode == "fusion" else skip,
                                      None if weights is None else weights[t], None if active is None else active[t],
                                      None if edge_weights is None else edge_weights[t])
            lres = stage(torch.cat((up, skip + self.outs[level](fused)), 1))
            if dec.deep_supervision:
                outputs.append(dec.seg_layers[s](lres))
            elif s == len(dec.stages) - 1:
                outputs.append(dec.seg_layers[-1](lres))
        outputs = outputs[::-1]  # highest resolution first, as nnU-Net expects
        return outputs if dec.deep_supervision else outputs[0]

    def remove_ops(self, alive) -> int:
        """Operation pruning of the search cells: delete the op modules that ``alive`` ``[cell types, edges, ops]``
        marks dead (in every cell of a shared type); returns how many were removed."""
        if self.genotype is not None:
            raise ValueError("IACUNet.remove_ops: fixed cells have no candidate operations to prune.")
        return sum(cell.remove_ops(alive[self.level_type[level]]) for level, cell in enumerate(self.cells))

    # ------------------------------------------------------------------ the host
    def initialize(self, module: nn.Module) -> None:
        """nnU-Net's init hook (``network.apply(network.initialize)``, called once per module, this network last):
        the host was initialised when it was built; here the trained host's weights are loaded where the
        configuration names a checkpoint (fine-tuning starts from it)."""
        if module is not self or self.host_checkpoint is None:
            return
        # nnU-Net predicts without deep supervision: there a missing host is a warning (the trained IAC
        # checkpoint replaces every weight next); a training must start from it
        path = host_to_load(self.host_checkpoint, self.decoder.deep_supervision, "IACUNet")
        if path is None:
            return
        from nnunet_nas.nnunet.search_state import read_checkpoint
        self.load_host_weights(read_checkpoint(path)["network_weights"], source=path)
        print(f"IACUNet: the trained host's weights loaded from {path}")

    def host_parameters(self) -> List[nn.Parameter]:
        """The trained host's parameters (encoder and decoder): what the IAC search freezes."""
        return list(self.encoder.parameters()) + list(self.decoder.parameters())

    def load_host_weights(self, state_dict: dict, source: str = "the trained model") -> None:
        """Load a trained host's weights (an nnU-Net checkpoint's ``network_weights``) into encoder and decoder by
        name; the cells keep theirs. Anything that does not match is one error naming what differs."""
        state_dict = {k.replace("_orig_mod.", "").removeprefix("module."): v for k, v in state_dict.items()}
        own = {k: v for k, v in self.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        missing = sorted(set(own) - set(state_dict))
        extra = sorted(set(state_dict) - set(own))
        shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
        if missing or extra or shapes:
            raise InputFileError(f"{source} is not this network's host (missing {missing[:3]}, unexpected {extra[:3]}, "
                             f"other shapes {shapes[:3]}): it was trained with other plans, configuration or "
                             f"network. Train the host with the same plans and configuration first.")
        self.load_state_dict(state_dict, strict=False)

    def compute_conv_feature_map_size(self, input_size) -> int:
        """Elements of every conv output of one forward at batch 1 (dynamic_network_architectures' convention,
        which nnU-Net's planner uses), counted on the meta device."""
        from nnunet_nas.networks.common import conv_output_elements
        return conv_output_elements(lambda: IACUNet(**self._kwargs), self._kwargs["input_channels"], input_size)

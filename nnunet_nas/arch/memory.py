"""Memory model of the DiNTS grid (He et al., CVPR 2021, section 3.5, Eq. 8-10) and rough network estimates.

Unit: stored activation *elements* (multiply by the bytes per element yourself). The model is the paper's
"tensor size" estimate with the per-op costs of :mod:`nnunet_nas.ops.catalog` (the same numbers as MONAI's
``ram_cost``): a cell on edge ``e`` (source level ``in``, target level ``out``) whose ops carry the weights
``alpha_n`` stores ::

    size_out(e) * (1 + sum_n alpha_n * (pre_cost(e) + op_cost_n))

``size_out(e) = batch * channels[out] * prod(patch / 2^(out+1))`` is the element count of the cell's output
(grid level ``d`` lives at 1/2^(d+1) of the input resolution, see ``networks/dints_net.py``; per axis, ``patch /
scale(out + 1)`` of the plan's geometry where it is anisotropic), ``1`` counts the
output itself, ``pre_cost`` is the edge's resolution change (``edge_preprocess_cost(...)``) and ``op_cost_n`` is
``OpSpec.memory_cost``. With ``sum_n alpha_n = 1`` (softmax) this is ``size_out * (1 + pre + sum_n alpha_n op_n)``.

* ``M_e`` (Eq. 8, :meth:`GridMemoryModel.expected`): ``sum_{b,e} P(edge (b,e) on) * cost(b, e)``. Eq. 8 sums
  over connection patterns ``j``; since ``sum_j eta_j cp_j(e) = P(e on)`` the marginals are enough. They equal
  MONAI's ``arch_code_prob_a``: ``sigmoid(a) / (1 - prod_e (1 - sigmoid(a)))``.
* ``M_a`` (Eq. 9, :meth:`GridMemoryModel.full`): every edge on and every ``alpha_n = 1``: a constant of the
  search space ([paper]). MONAI's ``get_ram_cost_usage(full=True)`` keeps ``softmax(alpha)`` instead, so its
  reference moves with (and back-propagates into) the op logits (MONAI_DINTS_NOTES q1); we do not follow it.
* ``L_m = |M_e / M_a - sigma|`` (Eq. 10, :meth:`GridMemoryModel.memory_loss`).

Relation to MONAI (checked in ``tests/test_memory.py``): MONAI's node size is
``batch * f[r] * prod(patch // 2^r) / 2`` where the real node has ``f[r+1] = 2 f[r]`` channels at
``patch / 2^(r+1)``: MONAI's sizes are ``2^(dims-2)`` times ours, i.e. **2x in 3-D, equal in 2-D**
(q2). Its ``M_e`` (``full=False``) is therefore exactly ``2 * expected(...) * 4 / 1024**2`` MB in 3-D.

The reference is a choice (``reference``, :data:`MEMORY_REFERENCES`). The paper's ``M_a`` counts all N ops of
every edge at weight one while a discrete network has one op per edge, so the attainable ratio ``M_e / M_a`` is
well below 1: its largest value, ``max_ratio("paper")`` (every edge on, the costliest op on each edge), does not
depend on L or channel_mul and is about 0.25 (3-D paper op set, D=4: 0.2543; 2-D op set: 0.2634), and a budget
above it only pushes towards the densest architecture. The search's default reference is therefore that largest
discrete architecture itself (``"max_discrete"``): sigma is then "the percentage of the maximum memory usage" the
paper describes, every sigma in (0, 1] is attainable, and ``max_ratio("max_discrete") == 1``.

For discrete networks :meth:`GridMemoryModel.genotype_elements` with ``saved=True`` counts what autograd really
keeps (``OpSpec.saved_cost``, :func:`~nnunet_nas.ops.catalog.edge_preprocess_saved_cost`): the paper's table also
counts each cell's norm output, which nothing saves, and a conv op's ReLU output and conv input twice.

Everything is linear in ``batch * prod(patch)``, so ratios do not depend on the patch or the batch: tables are
kept per input voxel ("unit patch") and scaled at the end. Sizes are exact when every patch extent is divisible
by the deepest level's scale (2^D on an isotropic geometry), which DiNTSNet requires.
"""

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from nnunet_nas.geometry import space_geometry
from nnunet_nas.ops.catalog import edge_preprocess_cost, edge_preprocess_saved_cost, op_specs
from nnunet_nas.spaces.grid import default_grid_op_set
from nnunet_nas.spaces.grid_topology import check_num_blocks, grid_topology


# What sigma is a share of. "max_discrete" [ours, default of the search]: the memory of the largest discrete
# architecture of the space (every edge on, the costliest op on each), so every sigma in (0, 1] is attainable and
# larger sigma means larger networks. "paper": Eq. 9's M_a (every edge on, every op weight at one), under which the
# attainable ratios end at max_ratio("paper"), about 0.25.
MEMORY_REFERENCES = ("max_discrete", "paper")
# How the ratio is held to sigma: "two_sided" (Eq. 10, |ratio - sigma|: memory below the budget is pushed up too) or
# "upper" (max(0, ratio - sigma): the budget is a cap)
MEMORY_PENALTIES = ("two_sided", "upper")


def budget_loss(ratio: torch.Tensor, sigma: float, penalty: str = "two_sided") -> torch.Tensor:
    """Eq. 10 on a memory ratio: ``|ratio - sigma|``, or with ``penalty="upper"`` ``max(0, ratio - sigma)``."""
    if penalty not in MEMORY_PENALTIES:
        raise ValueError(f"memory penalty {penalty!r} is not one of {MEMORY_PENALTIES}.")
    excess = ratio - float(sigma)
    return excess.abs() if penalty == "two_sided" else excess.clamp(min=0)


def _voxels(patch_size, spatial_dims: int) -> float:
    patch = [int(s) for s in patch_size]
    if len(patch) != spatial_dims:
        raise ValueError(f"Memory model: patch size {list(patch_size)} has {len(patch)} axes, expected {spatial_dims} "
                         f"(give the spatial extents only, without batch and channel).")
    return float(np.prod(patch, dtype=np.float64))


class GridMemoryModel:
    """Per-edge memory costs of an L x D grid (tables built once, float64 on the CPU).

    Args:
        num_blocks: L.
        num_depths: D.
        channels_per_level: ``[D]`` channels of the grid nodes, finest first (``DiNTSNet.filters[1:]``).
        spatial_dims: 2 or 3.
        op_set_name: op set in :mod:`nnunet_nas.ops.catalog` (default: the one for ``spatial_dims``).
        patch_size: the patch the network is trained at; needed (and only used) when an op's memory is not a
            multiple of its output size (DAST's transformer: its token-grid term is per op, not per voxel). Its cost
            at that patch enters the per-voxel tables, so ratios then hold for that patch; :meth:`expected`,
            :meth:`full` and :meth:`genotype_elements` at another patch recompute the tables for it.
        op_options: options of such ops (``OpSpec.options``: the transformer's ``token_grid``, ``num_heads``).
        geometry: the network's :class:`~nnunet_nas.geometry.Geometry` (D + 1 stages; level d is stage d + 1):
            level sizes and the edges' resampling follow its per-axis strides. None: isotropic.

    Attributes (torch float64):
        unit_size: ``[E]`` output elements of edge e per input voxel and batch item,
            ``channels[out] / prod(scale(out + 1))`` (``2^((out+1) * dims)`` on an isotropic geometry).
        pre_cost: ``[E]`` preprocess cost of edge e (output-size tensors).
        op_cost: ``[E, N]`` op costs (output-size tensors; the same on every edge for linear ops).
        out_cost: ``[E]`` ``unit_size`` (the "1": the cell output itself).
        op_edge_cost: ``[E, N]`` ``unit_size * (pre_cost + op_cost)``.
    """

    def __init__(self, num_blocks: int, num_depths: int, channels_per_level: Sequence[int], spatial_dims: int = 3,
                 op_set_name: Optional[str] = None, patch_size: Optional[Sequence[int]] = None,
                 op_options: Optional[Mapping] = None, geometry=None):
        check_num_blocks(num_blocks)
        topo = grid_topology(num_depths)
        channels = [int(c) for c in channels_per_level]
        if len(channels) != num_depths:
            raise ValueError(f"GridMemoryModel: expected {num_depths} channel counts (one per level), got {channels}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"GridMemoryModel: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        self.op_set_name = op_set_name or default_grid_op_set(spatial_dims)
        self.specs = specs = op_specs(self.op_set_name)
        self.nonlinear = tuple(s.name for s in specs if not s.linear)
        if self.nonlinear and patch_size is None:
            raise ValueError(f"GridMemoryModel: the memory of {list(self.nonlinear)} (op set {self.op_set_name}) is "
                             f"not a multiple of the output size; give the patch size the network is trained at.")
        self.patch_size = None if patch_size is None else [int(p) for p in patch_size]
        self.op_options = dict(op_options or {})
        self.num_blocks, self.num_depths, self.spatial_dims = num_blocks, num_depths, spatial_dims
        self.num_edges, self.num_ops = topo.num_edges, len(specs)
        self.channels = channels
        self.op_names = tuple(s.name for s in specs)
        self._topo = topo
        self.geometry = geo = space_geometry(geometry, spatial_dims, num_depths + 1, "GridMemoryModel geometry")
        f64 = torch.float64
        edges = [(int(i), int(o), int(d)) for i, o, d in zip(topo.edge_in, topo.edge_out, topo.edge_dir)]
        self.pre_cost = torch.tensor([edge_preprocess_cost(channels[i], channels[o], d, spatial_dims,
                                                           geo.strides[max(i, o) + 1]) for i, o, d in edges], dtype=f64)
        self._pre_saved = torch.tensor([edge_preprocess_saved_cost(channels[i], channels[o], d, spatial_dims,
                                                                   geo.strides[max(i, o) + 1]) for i, o, d in edges],
                                       dtype=f64)
        self.unit_size = torch.tensor([channels[o] / float(np.prod(geo.scale(o + 1))) for _, o, _ in edges], dtype=f64)
        self.out_cost = self.unit_size.clone()
        self._tables_by_patch = {}
        self.op_cost, self.op_edge_cost, self.saved_edge_cost, self._full_unit, self._max_unit = \
            self._unit_tables(self.patch_size)
        self._cache = {}

    def _unit_tables(self, patch_size):
        """(op_cost [E, N] in output-size tensors, op_edge_cost [E, N], saved_edge_cost [E, N], full and max units)
        for ``patch_size``; the same for every patch when all ops are linear."""
        key = tuple(patch_size) if self.nonlinear else None
        if key in self._tables_by_patch:
            return self._tables_by_patch[key]
        f64, E = torch.float64, self.num_edges
        cost = torch.tensor([[s.memory_cost for s in self.specs]] * E, dtype=f64)
        saved = torch.tensor([[s.saved_cost for s in self.specs]] * E, dtype=f64)
        for n, spec in enumerate(self.specs):
            if spec.linear:
                continue
            for e, o in enumerate(self._topo.edge_out):
                shape = [self.channels[o]] + list(self.geometry.shape(patch_size, int(o) + 1))
                per_output = spec.memory_elements(shape, self.op_options) / float(np.prod(shape, dtype=np.float64))
                cost[e, n] = saved[e, n] = per_output  # measured on autograd's saved tensors (ops/transformer.py)
        op_edge_cost = self.unit_size[:, None] * (self.pre_cost[:, None] + cost)
        # what autograd really keeps in a discrete network (no "1": a cell's norm output is saved by nobody)
        saved_edge_cost = self.unit_size[:, None] * (self._pre_saved[:, None] + saved)
        # constants per input voxel and batch item
        full_unit = float(self.num_blocks * (self.out_cost.sum() + op_edge_cost.sum()))
        max_unit = float(self.num_blocks * (self.out_cost.sum() + op_edge_cost.max(dim=1).values.sum()))
        self._tables_by_patch[key] = (cost, op_edge_cost, saved_edge_cost, full_unit, max_unit)
        return self._tables_by_patch[key]

    @classmethod
    def from_network(cls, net) -> "GridMemoryModel":
        """The model of a :class:`~nnunet_nas.networks.dints_net.DiNTSNet`'s grid (supernet or fixed)."""
        s = net.space
        return cls(s.num_blocks, s.num_depths, s.channels, s.spatial_dims, s.op_set_name, net.patch_size, s.op_options,
                   s.geometry)

    # ------------------------------------------------------------------ helpers
    def _tables(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self.out_cost.to(device=like.device, dtype=like.dtype),
                                self.op_edge_cost.to(device=like.device, dtype=like.dtype))
        return self._cache[key]

    def _check(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor) -> None:
        L, E, N = self.num_blocks, self.num_edges, self.num_ops
        if tuple(edge_marginals.shape) != (L, E):
            raise ValueError(f"GridMemoryModel: edge marginals have shape {list(edge_marginals.shape)}, "
                             f"expected [L, E] = [{L}, {E}].")
        if tuple(op_probs.shape) != (L, E, N):
            raise ValueError(f"GridMemoryModel: op probabilities have shape {list(op_probs.shape)}, "
                             f"expected [L, E, N] = [{L}, {E}, {N}] ({self.op_set_name}: {list(self.op_names)}).")

    def _unit_expected(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor, patch_size=None) -> torch.Tensor:
        self._check(edge_marginals, op_probs)
        if patch_size is not None and self.nonlinear and list(patch_size) != self.patch_size:
            op_edge_cost = self._unit_tables(patch_size)[1].to(device=edge_marginals.device, dtype=edge_marginals.dtype)
            out_cost = self._tables(edge_marginals)[0]
        else:
            out_cost, op_edge_cost = self._tables(edge_marginals)
        per_cell = out_cost + (op_probs * op_edge_cost).sum(-1)  # [L, E]
        return (edge_marginals * per_cell).sum()

    # ------------------------------------------------------------------ paper quantities
    def expected(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor, patch_size, batch_size: int = 1
                 ) -> torch.Tensor:
        """``M_e`` (Eq. 8) in elements: a differentiable scalar tensor.

        Args:
            edge_marginals: ``[L, E]`` P(edge on) (MONAI's ``arch_code_prob_a``).
            op_probs: ``[L, E, N]`` op weights, normally ``softmax(op_logits)``.
            patch_size: spatial extents of the network input.
            batch_size: batch size.
        """
        scale = batch_size * _voxels(patch_size, self.spatial_dims)
        return self._unit_expected(edge_marginals, op_probs, patch_size) * scale

    def full(self, patch_size, batch_size: int = 1) -> float:
        """``M_a`` (Eq. 9) in elements: every edge on, every op weight 1 (a constant; no gradient)."""
        return self._unit_tables(patch_size)[3] * batch_size * _voxels(patch_size, self.spatial_dims)

    def _reference_unit(self, reference: str) -> float:
        if reference not in MEMORY_REFERENCES:
            raise ValueError(f"memory reference {reference!r} is not one of {MEMORY_REFERENCES}.")
        return self._max_unit if reference == "max_discrete" else self._full_unit

    def max_ratio(self, reference: str = "paper") -> float:
        """Largest attainable ratio: every edge on with its costliest op (1 for ``max_discrete``; about 0.25 for
        the paper's ``M_a``)."""
        return self._max_unit / self._reference_unit(reference)

    def ratio(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor, reference: str = "paper") -> torch.Tensor:
        """``M_e / M_ref`` (independent of patch and batch); ``reference`` as in :data:`MEMORY_REFERENCES`."""
        return self._unit_expected(edge_marginals, op_probs) / self._reference_unit(reference)

    def memory_loss(self, edge_marginals: torch.Tensor, op_probs: torch.Tensor, sigma: float,
                    reference: str = "paper", penalty: str = "two_sided") -> torch.Tensor:
        """``L_m = |M_e / M_ref - sigma|`` (Eq. 10; ``M_ref = M_a`` with ``reference="paper"``); with
        ``penalty="upper"`` only memory above the budget costs, ``max(0, M_e / M_ref - sigma)`` (a cap: below it the
        term does not push towards costlier operations)."""
        return budget_loss(self.ratio(edge_marginals, op_probs, reference), sigma, penalty)

    # ------------------------------------------------------------------ discrete networks
    def genotype_elements(self, genotype, patch_size, batch_size: int = 1, saved: bool = False) -> float:
        """Elements of the discrete network's grid: the same model with 0/1 edges and one-hot ops; with ``saved``,
        the elements autograd keeps for it (``OpSpec.saved_cost``, :func:`edge_preprocess_saved_cost`)."""
        L, D = genotype.num_blocks, genotype.num_depths
        if (L, D) != (self.num_blocks, self.num_depths) or genotype.op_set != self.op_set_name:
            raise ValueError(f"GridMemoryModel: genotype has L={L}, D={D}, op set {genotype.op_set}; the model was "
                             f"built for L={self.num_blocks}, D={self.num_depths}, op set {self.op_set_name}.")
        _voxels(patch_size, self.spatial_dims)
        on = torch.as_tensor(np.asarray(genotype.arch_code_a), dtype=torch.float64)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(genotype.op_indices()), self.num_ops).to(torch.float64)
        unit = float((on * (onehot * self._unit_tables(patch_size)[2]).sum(-1)).sum()) if saved else \
            float(self._unit_expected(on, onehot, patch_size))
        return unit * batch_size * _voxels(patch_size, self.spatial_dims)


# ---------------------------------------------------------------------- whole network
def network_feature_map_size(net, input_size) -> int:
    """Estimated stored activation elements of one training forward of a ``DiNTSNet`` at batch 1.

    The grid comes from :class:`GridMemoryModel`: for a fixed network what autograd keeps for the genotype's edges
    and ops (``saved=True``); for the supernet every edge and every op at weight one, i.e. ``M_a``. Stems, the
    U-Net tail, the final block and the heads count the tensors autograd keeps for them (conv inputs, norm inputs,
    ReLU outputs, logits; a ReLU output that feeds a conv is counted once). Checked against
    :func:`saved_activation_elements` (``tests/test_memory.py``): 1.01x for the published DiNTS architecture
    (channel_mul 0.25, 64^3), 1.02-1.07x for random small genotypes; it was 1.69x with the paper's op table, which
    counts tensors that consecutive layers share. For the supernet, whose grid shares ReLUs and recomputes norms
    (spaces/grid.py), it is about 2.8x (L=4, D=4, channel_mul 0.25, 32^3). nnU-Net's planner and its reference
    values use dynamic_network_architectures' convention instead (one tensor per conv output,
    :mod:`nnunet_nas.nnunet.width`); compare like with like.
    """
    dims = net.spatial_dims
    size = [int(s) for s in input_size]
    if len(size) != dims:
        raise ValueError(f"network_feature_map_size: give the {dims} spatial extents only, got {list(input_size)}.")
    f = net.filters
    n = [float(np.prod(net.geometry.shape(size, r), dtype=np.float64)) for r in range(net.num_depths + 1)]
    in_ch = net.input_channels
    num_classes = net.stem_finals[-1].out_channels
    total = 0.0
    for d in range(net.num_depths):
        if net.input_nodes[d]:  # (resized) input, conv1 output, ReLU output, stride-2 conv output
            total += in_ch * n[d] + 2 * f[d] * n[d] + f[d + 1] * n[d + 1]
    model = net.memory_model  # built once per network
    total += model.full(size, 1) if net.genotype is None else model.genotype_elements(net.genotype, size, 1, saved=True)
    for r in range(net.num_depths - 1, -1, -1):
        total += f[r + 1] * n[r + 1] + f[r] * n[r + 1]  # ReLU output, conv output (the x2 resampling keeps none)
    total += 3 * f[0] * n[0] + num_classes * n[0]  # final ReLU, conv and norm outputs; logits
    for r in range(len(net.ds_heads)):
        total += (f[r + 1] + num_classes) * n[r + 1]  # deep-supervision heads (counted whenever they exist)
    return int(round(total))


def estimate_training_memory_bytes(net, patch_size, batch_size: int, amp: bool = True) -> int:
    """Rough training-memory estimate in bytes (for printing before training; not a guarantee).

    ``activations * (2 if amp else 4) + parameters * 4 * 4`` with ``activations =
    batch_size * net.compute_conv_feature_map_size(patch_size)`` (any network with DNA's estimator) and four fp32
    copies per parameter: the weights, their gradients, the SGD momentum buffer and one more copy for
    optimizer/GradScaler temporaries. Not counted: the CUDA context, cuDNN workspaces, allocator fragmentation and
    the fp32 tensors autocast keeps (norm statistics, loss inputs). The activation count is within 10 % of what
    autograd keeps for a fixed network on the CPU (see :func:`network_feature_map_size`); not validated against a
    GPU's peak memory.
    """
    activations = batch_size * net.compute_conv_feature_map_size(patch_size)
    params = sum(p.numel() for p in net.parameters())
    return int(activations * (2 if amp else 4) + params * 4 * 4)


MEASURED_TOLERANCE = 0.10  # |estimate / autograd's saved activations - 1| for discrete DiNTS networks (tested)


def saved_activation_elements(net, x: torch.Tensor) -> int:
    """Elements of the activations autograd keeps for one training step of ``net`` on ``x`` (the loss is a sum
    over the outputs): every distinct storage saved for backward, parameters excluded. The measurement the
    estimates are checked against."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
        loss = sum(o.float().mean() for o in out) if isinstance(out, (list, tuple)) else out.float().mean()
    loss.backward()
    return int(sum(seen.values()))

"""DiNTS search as an nnU-Net trainer (He et al., CVPR 2021).

``nnUNetv2_train DATASET 3d_fullres FOLD -tr nnUNetTrainerDiNTSSearch`` searches an L x D grid architecture on
the fold's training cases (weight half / architecture half), logs it every epoch, and at the end writes
``dints_genotype.json`` + ``dints_architecture.png`` next to the checkpoint and registers the configuration
``3d_fullres_dints`` in the dataset's ``nnUNetPlans.json``.
"""

import os

import numpy as np
import torch

from nnunet_nas.arch import grid_probs
from nnunet_nas.arch.memory import GridMemoryModel
from nnunet_nas.arch.params import GridArchParams
from nnunet_nas.config import DiNTSSearchConfig
from nnunet_nas.discretize.grid_path import decode_monai
from nnunet_nas.nnunet.export import export_from_checkpoint
from nnunet_nas.nnunet.search_network import SearchNetwork
from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
from nnunet_nas.networks.dints_net import DiNTSNet
from nnunet_nas.ops.catalog import default_op_set, op_names

TRAJECTORY_FILE = "dints_arch_trajectories.png"


class DiNTSSearchTrainer(NASSearchTrainer):
    search_config = DiNTSSearchConfig()
    history_keys = ("arch_entropy_alpha", "arch_entropy_eta", "arch_topology_loss", "arch_memory_ratio",
                    "arch_discretization_gap")

    # ------------------------------------------------------------------ network
    @classmethod
    def required_patch_divisor(cls, spatial_dims: int) -> int:
        return 2 ** (cls.search_config.num_depths + 1)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        cfg = cls.search_config
        dims = len(configuration_manager.patch_size)
        supernet = DiNTSNet(num_input_channels, num_output_channels, None, cfg.num_blocks, cfg.num_depths, dims,
                            cfg.channel_mul, strides=cls._search_strides(dims), deep_supervision=enable_deep_supervision,
                            recompute_norms=cfg.recompute_norms)
        arch = GridArchParams(cfg.num_blocks, cfg.num_depths, len(op_names(default_op_set(dims))))
        return SearchNetwork(supernet, arch)

    @classmethod
    def _search_strides(cls, dims: int):
        return [[1] * dims] + [[2] * dims] * cls.search_config.num_depths

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        strides = self._search_strides(len(self.configuration_manager.patch_size))
        return [list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]

    def _memory_model(self, net):
        if getattr(self, "_memory", None) is None:
            self._memory = GridMemoryModel.from_network(net.supernet)
        return self._memory

    def on_train_start(self):
        super().on_train_start()
        attainable = self._memory_model(self._unwrap()).max_ratio()
        if self.search_config.memory_budget > attainable:
            self.print_to_log_file(
                f"note: memory budget sigma={self.search_config.memory_budget} is above the largest ratio M_e/M_a "
                f"this space can reach ({attainable:.3f}) with the paper's constant reference M_a (all alpha and "
                f"eta at one, Eq. 9): the memory term pushes towards the densest, most expensive architecture. "
                f"Budgets in (0, {attainable:.3f}) constrain memory (see README).")

    # ------------------------------------------------------------------ L_arch terms (Eq. 5, 7, 10)
    def arch_regularizers(self, net):
        arch, cfg = net.arch, self.search_config
        eta = grid_probs.pattern_probs(arch.edge_logits)
        op_probs = torch.softmax(arch.op_logits, -1)
        memory = self._memory_model(net).memory_loss(grid_probs.edge_marginals(arch.edge_logits), op_probs,
                                                     cfg.memory_budget, self.configuration_manager.patch_size,
                                                     self.batch_size)
        return {"entropy_alpha": grid_probs.entropy_loss_ops(arch.op_logits),
                "entropy_eta": grid_probs.entropy_loss_patterns(eta),
                "topology": cfg.topology_weight * grid_probs.topology_loss(eta, net.supernet.num_depths),
                "memory": memory}

    @torch.no_grad()
    def describe_architecture(self, net):
        arch = net.arch
        edge_logits, op_logits = arch.edge_logits.detach().float().cpu(), arch.op_logits.detach().float().cpu()
        eta = grid_probs.pattern_probs(edge_logits)
        _, code_a, _ = decode_monai(edge_logits, op_logits)
        mem = self._memory_model(net)
        patch, batch = self.configuration_manager.patch_size, self.batch_size
        ratio = float(mem.expected(grid_probs.edge_marginals(edge_logits), torch.softmax(op_logits, -1), patch, batch)
                      / mem.full(patch, batch))
        return {
            "arch_entropy_alpha": float(grid_probs.entropy_loss_ops(op_logits)),
            "arch_entropy_eta": float(grid_probs.entropy_loss_patterns(eta)),
            "arch_topology_loss": float(grid_probs.topology_loss(eta, net.supernet.num_depths)),
            "arch_memory_ratio": ratio,
            "arch_discretization_gap": float(grid_probs.discretisation_gap(edge_logits, code_a)),
            "edge_probs": torch.sigmoid(edge_logits).numpy().round(5).tolist(),
            "op_probs": torch.softmax(op_logits, -1).numpy().round(5).tolist(),
        }

    def plot_history(self):
        from nnunet_nas.viz import plot_arch_trajectories
        net, h = self._unwrap(), dict(self.arch_history)
        h["op_names"] = list(op_names(net.supernet.space.op_set_name))
        h["sigma"] = self.search_config.memory_budget
        h["max_ratio"] = self._memory_model(net).max_ratio()
        for ours, theirs in (("arch_discretization_gap", "gap"), ("arch_memory_ratio", "memory_ratio"),
                             ("arch_topology_loss", "topology_loss"), ("arch_entropy_alpha", "entropy_alpha"),
                             ("arch_entropy_eta", "entropy_eta")):
            h[theirs] = h.get(ours, [])
        try:
            plot_arch_trajectories(h, os.path.join(self.output_folder, TRAJECTORY_FILE))
        except Exception as e:  # noqa: BLE001 - a picture must never stop a search
            self.print_to_log_file(f"could not draw architecture trajectories: {e}")

    # ------------------------------------------------------------------ result
    def export_result(self):
        path = os.path.join(self.output_folder, "checkpoint_final.pth")
        if self.disable_checkpointing or not os.path.isfile(path):
            self.print_to_log_file("no final checkpoint written: nothing to export")
            return
        name = export_from_checkpoint(path, log=self.print_to_log_file)
        self.print_to_log_file(f"Train the found architecture with: nnUNetv2_train {self.plans_manager.dataset_name} "
                               f"{name} {self.fold}")

"""NASSearchTrainer: the one place where architecture search meets nnUNetTrainer, for every registered method.

A search trainer names its method (``nas_method = "dints"``) and may replace its config (``search_config``); all
method-specific pieces come from the registry record (:mod:`nnunet_nas.registry`). It adds to nnU-Net's loop,
never copies it:

* the fold's training cases are split into a weight part and an architecture part (``data_split``, e.g. 1:1 or
  4:1), with two nnU-Net data streams under the same augmentation (``get_tr_and_val_datasets`` /
  ``get_dataloaders``); the fold's validation cases never reach the architecture;
* first-order bi-level optimisation (DARTS): per iteration an architecture step (Adam, own GradScaler, optional
  gradient clipping) on an architecture batch, then nnU-Net's own weight step with alpha read without gradient;
  architecture steps start after the warm-up; the weight optimiser is nnU-Net's SGD or Adam (config);
* ``L_arch = L_seg + t / t_all * sum(regularisers)`` (DiNTS Eq. 11), t counted in architecture steps;
* strategies (:mod:`nnunet_nas.strategies`) hook in before each step, after each architecture step and at each
  epoch end: temperature annealing, operation pruning (masks, op modules, optimisers, DDP), early stopping
  (checkpoint, export, clean end of nnU-Net's run);
* checkpoints carry the architecture optimiser, scaler, ramp, weighting and strategy states, RNG states and the
  per-epoch history, and are written atomically; ``--c`` resumes exactly (with ``nnUNet_n_proc_DA=0``, see
  documentation/reproducibility.md);
* per-epoch logging of the architecture through nnU-Net's logger, pictures next to ``progress.png``, and export
  of the result as an nnU-Net configuration at the end.
"""

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

from nnunet_nas.convergence import LEVER, SEPARATION_FLOOR, argmax_changed_share
from nnunet_nas.errors import ConfigError, InputFileError, install_excepthook
from nnunet_nas.io import atomic_path
from nnunet_nas.memory_count import IterationMemory
from nnunet_nas.memory_fit import SEARCH_WIDTH_KEY, SearchFit, fit_search, memory_target, narrowed
from nnunet_nas.nnunet.data import make_arch_dataloader, split_weight_arch
from nnunet_nas.nnunet.rng import get_rng_state, seed_everything, set_rng_state
from nnunet_nas.nnunet.search_memory import (count_export_memory, estimate_search_iteration, search_divisor,
                                             search_patch)
from nnunet_nas.nnunet.search_network import SearchNetwork, build_search_network, unwrap_network
from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY, differing_settings, read_checkpoint
from nnunet_nas.planned_network import PlannedNetwork
from nnunet_nas.registry import SearchMethod, get_method
from nnunet_nas.strategies.base import SearchProgress, SearchStrategy
from nnunet_nas.strategies.jsd_pruning import JSDStabilityPruning
from nnunet_nas.strategies.pruning import prune_search_network, rebuild_optimizer

ADAM_DEFAULT_LR = 1e-3


class SearchStopped(Exception):
    """Raised at an epoch end when a strategy stops the search early; caught by :meth:`run_training`."""


class NASSearchTrainer(nnUNetTrainer):
    nas_method: Optional[str] = None  # registry key, set by the method's trainer
    search_config = None  # the method's config dataclass; None: its defaults
    num_epochs_default = 80
    iterations_per_epoch = None  # None: nnU-Net's (250 / 50)
    val_iterations_per_epoch = None
    # [ours] checkpoint_latest every epoch (nnU-Net: every 50): a search of 80-200 epochs cut off by a scheduler's time
    # limit would otherwise resume from its one to four saves, or start again; None keeps nnU-Net's
    save_every_default = 1
    host_trainer = "nnUNetTrainer"  # methods that build on a trained model (IAC): the trainer that trained it
    search_seed = 12345  # [ours] searches are seeded (seed + fold): the same command finds the same architecture
    _arch_finite: Optional[Dict[str, torch.Tensor]] = None  # on an accelerator: alpha finite so far this epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        install_excepthook(type(self).__name__)  # a user error ends nnUNetv2_train's output with its one line
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.method, self.cfg = self.method_and_config()
        self.check_inputs()
        self.num_epochs = self.num_epochs_default
        self.num_iterations_per_epoch = self.iterations_per_epoch or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch or self.num_val_iterations_per_epoch
        self.save_every = self.save_every_default or self.save_every
        self.arch_optimizer = None
        self.arch_grad_scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None
        self.arch_steps_done = 0
        self.arch_history: Dict[str, list] = {}
        self.dataloader_arch = None
        self.host_checkpoint = None  # the trained model the search builds on (methods with trained_host)
        self.stopped_early = False
        self._warned_separation = False
        self._arch_signal = self._arch_signal_n = None  # alpha's squared gradient summed over the epoch, count
        self._stop_reasons: List[str] = []
        self._pending_rng_state = None
        self.search_fit: Optional[SearchFit] = None  # the search's batch, patch and width (nnunet_nas.memory_fit)
        self.strategies: List[SearchStrategy] = self.build_strategies()
        for key in self.history_keys:
            self.logger.local_logger.my_fantastic_logging[key] = []
        self._adapt_patch_size()
        # per rank: under DDP each rank must draw different batches (DDP broadcasts rank 0's weights anyway)
        seed_everything(self.search_seed + self._fold_seed() + 1000 * self.local_rank)

    # ------------------------------------------------------------------ the method
    @classmethod
    def method_and_config(cls):
        if cls.nas_method is None:
            raise TypeError(f"{cls.__name__} names no NAS method: set nas_method to one of the registry's names.")
        method: SearchMethod = get_method(cls.nas_method)
        cfg = cls.search_config if cls.search_config is not None else method.config_class()
        if not isinstance(cfg, method.config_class):
            raise TypeError(f"{cls.__name__}: search_config is a {type(cfg).__name__}, method {method.name!r} needs "
                            f"a {method.config_class.__name__}.")
        return method, cfg

    def check_inputs(self) -> None:
        """What the search and its export hours later need, checked before the first step: every config field, the
        op set's dimensionality, and the environment, plans, base configuration and name of the export."""
        from nnunet_nas.nnunet.export import check_export_inputs, pinned_export_name
        dims = len(self.configuration_manager.patch_size)
        self.cfg.validate(spatial_dims=dims, source=f"{type(self).__name__}.search_config")
        self.method.op_set_for(self.cfg, dims)
        self.export_name = pinned_export_name()
        check_export_inputs(self.plans_manager.dataset_name, self.plans_manager.plans_name, self.configuration_name,
                            self.method, self.cfg, self.export_name)

    def build_strategies(self) -> List[SearchStrategy]:
        """The method's strategies for this config, plus JSD stability pruning where the config asks for it (a
        variant may add its own)."""
        strategies = list(self.method.make_strategies(self.cfg))
        if self.cfg.jsd_pruning is not None:
            strategies.append(JSDStabilityPruning(self.cfg.jsd_pruning, genotype_fn=self.current_genotype,
                                                  arch_optimizer=(self.cfg.arch_lr, self.cfg.arch_betas)))
        for s in strategies:
            s.log = self.print_to_log_file
        return strategies

    def current_genotype(self, net: SearchNetwork):
        """``(key, kept edges)`` of the genotype the search would export now: a JSON key (provenance left out) and
        the method's mask of the edges that genotype uses (None: the method does not say)."""
        state = {k: v.detach().cpu() for k, v in net.arch.state_dict().items()}
        genotype = self.method.discretize(state, self.method.op_set_for(self.cfg, len(
            self.configuration_manager.patch_size)), cfg=self.cfg)
        d = genotype.to_dict()
        d.pop("provenance", None)
        kept = self.method.kept_edges(genotype) if self.method.kept_edges is not None else None
        return json.dumps(d, sort_keys=True, default=str), kept

    @property
    def history_keys(self):
        return tuple(self.method.history_keys) + SIGNAL_KEYS + tuple(
            k for s in self.strategies for k in s.history())

    def _fold_seed(self) -> int:
        return self.fold if isinstance(self.fold, int) else 0

    # ------------------------------------------------------------------ set-up
    def _adapt_patch_size(self) -> None:
        """Follow the plan's geometry: the search space takes the configuration's per-axis strides and kernels
        (:meth:`SearchMethod.search_geometry`); the patch is rounded up only where it is not divisible by their
        product per axis (nnU-Net's own patches are), in the trainer's configuration and in the plans copy that
        training writes next to the checkpoint (so prediction with this trainer uses it too)."""
        cm = self.configuration_manager
        geometry, note, new = search_patch(self.method, self.cfg, cm)
        self.space_geometry = geometry  # recorded in the search state: the export builds the network the search ran
        if geometry is None:
            return
        self.print_to_log_file(f"{type(self).__name__}: search space geometry from the plan: strides "
                               f"{[list(s) for s in geometry.strides]}, kernels {[list(k) for k in geometry.kernels]}"
                               + (f" ({note})" if note else ""))
        patch = list(cm.patch_size)
        if new != patch:
            self.print_to_log_file(f"{type(self).__name__}: patch size {patch} -> {new} (divisible by "
                                   f"{list(geometry.divisor)} per axis, as the search space requires; smaller images "
                                   f"are padded by nnU-Net)")
            cm.configuration["patch_size"] = new
            self.plans_manager.plans["configurations"][self.configuration_name]["patch_size"] = new

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        """The search network of the class's config, at the width the memory fit recorded in the configuration
        (:data:`SEARCH_WIDTH_KEY`: the trainer's and the plans copy's, so nnU-Net's predictor builds it too)."""
        method, cfg = cls.method_and_config()
        width = configuration_manager.configuration.get(SEARCH_WIDTH_KEY)
        if width is not None:
            cfg = narrowed(cfg, width["field"], width["scale"])
        return build_search_network(method, cfg, configuration_manager, num_input_channels, num_output_channels,
                                    enable_deep_supervision)

    def _build_loss(self):
        """nnU-Net's loss (Dice + CE, deep-supervision weights), or the config's Jaccard distance in its place."""
        loss = super()._build_loss()
        if self.cfg.loss == "jaccard":
            from nnunet_nas.nnunet.losses import SoftJaccardLoss
            if self.label_manager.has_regions or self.label_manager.ignore_label is not None:
                raise ValueError("loss='jaccard' supports plain label maps only (no regions, no ignore label); use "
                                 "loss='dice_ce' for this dataset.")
            jaccard = SoftJaccardLoss(batch_dice=self.configuration_manager.batch_dice)
            if hasattr(loss, "loss"):  # nnU-Net's DeepSupervisionWrapper
                loss.loss = jaccard
            else:
                loss = jaccard
        return loss

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision or self.network is None:
            return super()._get_deep_supervision_scales()
        strides = self._unwrap().supernet.strides
        return [list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0)][:-1]

    def _do_i_compile(self):
        return False  # sampled/pruned paths would recompile; the exported network may use compile

    def _unwrap(self) -> SearchNetwork:
        return unwrap_network(self.network)

    def load_trained_host(self, net: SearchNetwork) -> None:
        """For a method that builds on a trained model of the planned network (IAC): find it, load its weights into
        the supernet's host and freeze them (:func:`nnunet_nas.nnunet.host.load_and_freeze_host`)."""
        from nnunet_nas.nnunet.host import load_and_freeze_host
        self.host_checkpoint = load_and_freeze_host(net.supernet, self.plans_manager.dataset_name,
                                                    self.plans_manager.plans_name, self.configuration_name, self.fold,
                                                    self.host_trainer)
        self.print_to_log_file(f"trained host loaded and frozen: {self.host_checkpoint}")

    def prepare_search_network(self, net: SearchNetwork) -> None:
        """Called once the network exists, before any optimiser is built: load and freeze a trained part here
        (``requires_grad_(False)``); frozen weights reach no optimiser."""

    def initialize(self):
        self.apply_memory_fit()  # before the network is built: a transformer's token grid follows the patch
        with nnunet_wraps_ddp_with(self._make_ddp):  # nnU-Net's one DDP wrap, made with the search's settings
            super().initialize()
        if self.is_ddp and not (isinstance(self.network, DDP) and self.network.find_unused_parameters):
            raise RuntimeError("nnU-Net's initialize did not wrap the search network through its module's DDP name; "
                               "this nnU-Net version needs another hook in NASSearchTrainer.initialize.")
        net = self._unwrap()
        net.export_memory = self.count_export_memory()
        if self.method.check_search is not None:
            self.method.check_search(net, self.cfg)
        net.weighting.seed(self.search_seed + self._fold_seed())  # the same on every rank: same sampled ops
        self.arch_optimizer = make_arch_optimizer(net.arch_parameters(), self.cfg)

    def _make_ddp(self, module) -> DDP:
        """The search network's DDP wrapper: nnU-Net's device ids, and ``find_unused_parameters`` (the weight step
        reads alpha without gradient; sampled and pruned ops leave weights unused)."""
        return DDP(module, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                   find_unused_parameters=True)

    # ------------------------------------------------------------------ memory fit
    def apply_memory_fit(self) -> None:
        """The search batch, patch and width: fitted to the memory target at a new search (rank 0 decides under
        DDP), the checkpoint's at a resume (:meth:`load_checkpoint` sets :attr:`search_fit` and the config's width
        first); set in the configuration both data streams and the network builder read, and so in the plans copy
        written next to the checkpoint."""
        if self.search_fit is None:
            self.search_fit = self._rank0(self.fit_memory() if self.local_rank == 0 else None)
            self.print_to_log_file(self.search_fit.describe())
            self.cfg = self.search_fit.applied_to(self.cfg)
        fit = self.search_fit
        if not fit.changed:
            return
        values = {"patch_size": list(fit.patch_size)}
        if fit.batch_size != fit.planned_batch_size:  # per GPU: nnU-Net splits the configuration's batch over ranks
            values["batch_size"] = fit.batch_size * self._world_size()
        if fit.width_scale != 1.0:
            values[SEARCH_WIDTH_KEY] = {"field": fit.width_field, "scale": fit.width_scale}
        for key, value in values.items():
            self.configuration_manager.configuration[key] = value
            self.plans_manager.plans["configurations"][self.configuration_name][key] = value

    def _world_size(self) -> int:
        return dist.get_world_size() if self.is_ddp else 1

    def _batch_per_gpu(self) -> int:
        """The configuration's batch on one GPU (nnU-Net's largest per-rank share of it under DDP)."""
        return max(1, -(-self.configuration_manager.batch_size // self._world_size()))

    def fit_memory(self) -> SearchFit:
        """The memory fit of :mod:`nnunet_nas.memory_fit` for this search (the configuration's batch and patch,
        uncounted, where the target is ``off``)."""
        target = memory_target(self.device, self.cfg.memory_target_gb)
        cm = self.configuration_manager
        batch = self._batch_per_gpu()
        if target.bytes is None:
            return SearchFit.as_planned(batch, cm.patch_size, target.source)
        divisor = search_divisor(self.space_geometry, cm.network_arch_init_kwargs, len(cm.patch_size))
        return fit_search(self.estimate_search_memory, batch, cm.patch_size, divisor, target,
                          self.method.search_width_field)

    def estimate_search_memory(self, batch: int, patch, width_scale: float = 1.0) -> IterationMemory:
        """One search iteration of this trainer's search at ``batch`` (per GPU) x ``patch`` x ``width_scale`` its
        width, counted without running it on the CUDA path (fp16 autocast on CUDA, fp32 on the CPU: an upper bound
        there) with DDP's gradient buckets under DDP
        (:func:`~nnunet_nas.nnunet.search_memory.estimate_search_iteration`)."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        cm = self.configuration_manager
        return estimate_search_iteration(self.method, self.cfg, cm, determine_num_input_channels(
            self.plans_manager, cm, self.dataset_json), self.label_manager.num_segmentation_heads, batch, patch,
            width_scale, cuda=self.device.type == "cuda", deep_supervision=self.enable_deep_supervision,
            ddp=self.is_ddp)

    def count_export_memory(self):
        """The search's memory in nnU-Net's terms where its config budgets so
        (:func:`~nnunet_nas.nnunet.search_memory.count_export_memory`): at the configured width (not the memory fit's
        narrowing: the export's width follows the config) and the configuration's patch (not the search's)."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        cm = self.configuration_manager
        planned = replace(PlannedNetwork.from_configuration_manager(cm), patch_size=self.search_fit.planned_patch_size)
        return count_export_memory(self.method, type(self).method_and_config()[1], planned,
                                   determine_num_input_channels(self.plans_manager, cm, self.dataset_json),
                                   self.label_manager.num_segmentation_heads)

    def configure_optimizers(self):
        net = unwrap_network(self.network)
        if self.method.trained_host:
            self.load_trained_host(net)
        self.prepare_search_network(net)
        params = list(net.weight_parameters())  # alpha and frozen weights are excluded by construction
        if self.cfg.weight_optimizer == "adam":
            lr = self.cfg.weight_lr or ADAM_DEFAULT_LR
            optimizer = torch.optim.Adam(params, lr, betas=tuple(self.cfg.weight_betas), weight_decay=self.weight_decay)
        else:  # nnU-Net's optimiser
            lr = self.cfg.weight_lr or self.initial_lr
            optimizer = torch.optim.SGD(params, lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, lr, self.num_epochs)

    # ------------------------------------------------------------------ data
    def get_tr_and_val_datasets(self):
        tr_keys, val_keys = self.do_split()
        weight_keys, arch_keys = split_weight_arch(tr_keys, self.cfg.data_split)
        self.print_to_log_file(f"architecture search: weight split {len(weight_keys)} / arch split {len(arch_keys)} "
                               f"cases; {len(val_keys)} validation cases are never used for the architecture")
        make = lambda keys: self.dataset_class(self.preprocessed_dataset_folder, keys,  # noqa: E731
                                               folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        self._dataset_arch = make(arch_keys)
        return make(weight_keys), make(val_keys)

    def get_dataloaders(self):
        loaders = super().get_dataloaders()
        self.dataloader_arch = make_arch_dataloader(self, self._dataset_arch)
        return loaders

    def on_train_start(self):
        super().on_train_start()
        if self._pending_rng_state is not None:  # resume: continue the random streams where the checkpoint left them
            set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        self.print_to_log_file(f"{self.method.name} search: {self.warmup_epochs} warm-up epochs without architecture "
                               f"steps, then {self.num_epochs - self.warmup_epochs} epochs of bi-level optimisation; "
                               f"config {self.cfg.to_dict()}")
        net = self._unwrap()
        for line in (self.method.search_notes(net, self.cfg) if self.method.search_notes else []):
            self.print_to_log_file(line)
        for s in self.strategies:
            s.on_search_start(net, self.progress())
        if self.local_rank == 0 and self.method.plot_supernet is not None:
            try:
                self.method.plot_supernet(net.supernet, os.path.join(self.output_folder,
                                                                     self.method.output_file("network")))
            except Exception as e:  # noqa: BLE001 - a picture must never stop a search
                self.print_to_log_file(f"could not draw the searched network: {e}")
        if self.stopped_early:
            raise SearchStopped("the search in this checkpoint had already stopped; nothing left to do")

    def run_training(self):
        try:
            super().run_training()
        except SearchStopped as e:
            self.print_to_log_file(f"search stopped early at epoch {self.current_epoch - 1}: {e}")
            self.on_train_end()  # final checkpoint, export, data loaders shut down

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_arch, NonDetMultiThreadedAugmenter):
            self.dataloader_arch._finish()
        if self.local_rank == 0:
            self.export_result()
        if self.is_ddp:
            dist.barrier()

    # ------------------------------------------------------------------ optimisation
    @property
    def warmup_epochs(self) -> int:
        return self.cfg.num_warmup_epochs(self.num_epochs)

    @property
    def arch_steps_total(self) -> int:
        return max(1, (self.num_epochs - self.warmup_epochs) * self.num_iterations_per_epoch)

    def ramp(self) -> float:
        """t / t_all of Eq. 11, t = architecture steps already taken."""
        return min(1.0, self.arch_steps_done / self.arch_steps_total)

    def progress(self) -> SearchProgress:
        return SearchProgress(self.current_epoch, self.num_epochs, self.warmup_epochs, self.arch_steps_done,
                              self.arch_steps_total)

    def train_step(self, batch: dict) -> dict:
        net = self._unwrap()
        for s in self.strategies:
            s.before_step(net, self.progress())
        out = {}
        if self.current_epoch >= self.warmup_epochs:
            out.update(self.arch_step(next(self.dataloader_arch)))
            for s in self.strategies:
                s.after_arch_step(net, self.progress())
        net.arch_frozen = True
        try:
            out.update(super().train_step(batch))
        finally:
            net.arch_frozen = False
        return out

    def arch_step(self, batch: dict) -> dict:
        net = self._unwrap()
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.arch_optimizer.zero_grad(set_to_none=True)
        ramp = self.ramp()
        amp = torch.autocast(self.device.type, enabled=self.device.type == "cuda")
        params = list(net.arch_parameters())
        # The architecture step needs no weight gradients: skipping them saves a third of the backward pass.
        # Under DDP every parameter's requires_grad must stay fixed after wrapping, so there they are computed.
        with requires_grad_off(net.weight_parameters(), enabled=not isinstance(self.network, DDP)):
            with amp:
                seg = self.loss(self.network(data), target)
            regs = {k: v.float() for k, v in self.method.regularizers(net, self.cfg).items()}  # fp32, no autocast
            loss = seg + ramp * sum(regs.values()) if regs else seg
            scaler = self.arch_grad_scaler
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(self.arch_optimizer)
            self._note_arch_signal(net)
            if self.cfg.arch_grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.arch_grad_clip)
            if scaler is not None:
                scaler.step(self.arch_optimizer)
                scaler.update()
            else:
                self.arch_optimizer.step()
        for p in params:
            p.grad = None  # keep alpha out of the weight step's gradient clipping
        self._note_arch_finite(net)
        self.arch_steps_done += 1
        # on the device: read once per epoch (on_train_epoch_end), as a read per step is a host sync on a GPU
        logs = {"arch_loss": loss.detach()}
        logs.update({f"reg_{k}": v.detach() for k, v in regs.items()})
        return logs

    def _note_arch_signal(self, net: SearchNetwork) -> None:
        """Alpha's loss gradient this step (weight decay is Adam's, not in it), summed on the device; read per epoch
        as ``arch_grad_rms``."""
        grad = net.arch.op_logits.grad
        if grad is None:
            return
        squares = grad.detach().float().square().sum()
        finite = torch.isfinite(squares)  # an AMP step the GradScaler skips (overflow) carries no signal
        squares, count = torch.where(finite, squares, 0.0), finite.float() * grad.numel()
        self._arch_signal = squares if self._arch_signal is None else self._arch_signal + squares
        self._arch_signal_n = count if self._arch_signal_n is None else self._arch_signal_n + count

    def _epoch_signal(self, record: dict) -> None:
        """``arch_grad_rms`` (RMS of alpha's loss gradient over the epoch's architecture steps; NaN without any) and
        ``arch_softmax_shift`` (how far softmax(alpha) at temperature 1 moved this epoch: the mean over edges of the
        total variation distance to the previous epoch's)."""
        squares, n = self._arch_signal, self._arch_signal_n
        self._arch_signal = self._arch_signal_n = None
        record["arch_grad_rms"] = float("nan") if squares is None or not n else float((squares / n).sqrt())
        previous = self.arch_history.get("op_probs")
        record["arch_softmax_shift"] = float("nan") if not previous else float(0.5 * np.abs(
            np.asarray(record["op_probs"], dtype=np.float64) - np.asarray(previous[-1], dtype=np.float64)).sum(
            axis=-1).mean())

    def _note_arch_finite(self, net: SearchNetwork) -> None:
        """Alpha's finiteness after an update: checked now on the CPU; on an accelerator kept as device flags, and-ed
        over the epoch's steps and checked at its end (:meth:`on_train_epoch_end`, before anything is saved)."""
        if self.device.type == "cpu":
            net.arch.check_finite()
            return
        flags, seen = net.arch.finite_flags(), self._arch_finite
        self._arch_finite = flags if seen is None else {k: v & seen[k] for k, v in flags.items()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        flags, self._arch_finite = self._arch_finite, None
        if flags is not None:
            self._unwrap().arch.check_finite(flags)
        super().on_train_epoch_end(outputs_on_host(train_outputs))

    # ------------------------------------------------------------------ epoch end: strategies, record
    def on_epoch_end(self):
        net = self._unwrap()
        self._apply_strategy_decisions(net)
        if self.local_rank == 0:  # alpha is identical on every rank (DDP): rank 0 decodes, logs and draws
            record = self.method.describe(net, self.cfg)
            for s in self.strategies:
                record.update(s.history())
            changed = argmax_changed_share(self.arch_history.get("op_probs", []) + [record["op_probs"]])
            record["arch_argmax_changed"] = float("nan") if changed is None else changed
            self._epoch_signal(record)
            for key in self.history_keys:
                self.logger.log(key, float(record[key]), self.current_epoch)
            for key, value in record.items():
                self.arch_history.setdefault(key, []).append(value)
            self.arch_history.setdefault("epoch", []).append(self.current_epoch)
            summary = ", ".join(f"{k} {float(record[k]):.4g}" for k in self.history_keys)
            self.print_to_log_file(f"architecture: ramp {self.ramp():.3f}, {summary}")
            self._warn_if_not_separating(record)
        super().on_epoch_end()
        if self.local_rank == 0:
            self.plot_history()
        if self.stopped_early:
            raise SearchStopped(f"stopped by {', '.join(self._stop_reasons)}")

    def _warn_if_not_separating(self, record: dict) -> None:
        """Past the search's midpoint, once: a line in the log while alpha is still close to uniform."""
        if self._warned_separation or self.current_epoch + 1 < self.num_epochs / 2 or not self.arch_steps_done:
            return
        if record["arch_separation"] < SEPARATION_FLOOR:
            self._warned_separation = True
            self.print_to_log_file(
                f"WARNING: past the search's midpoint (epoch {self.current_epoch}) the op choice is still close to "
                f"uniform (separation {record['arch_separation']:.3f} < {SEPARATION_FLOOR:g}, 0 being uniform); the "
                f"export would be close to a random draw of the space: {LEVER}.")

    def _apply_strategy_decisions(self, net: SearchNetwork) -> None:
        progress = self.progress()
        masks = [m for m in (s.on_epoch_end(net, progress) for s in self.strategies) if m is not None]
        alive = None
        for m in masks:
            alive = m.bool().cpu() if alive is None else alive & m.bool().cpu()
        alive = self._rank0(alive)
        if alive is not None:
            self.apply_op_pruning(alive)
        reasons = [s.name for s in self.strategies if s.should_stop(net, self.progress())]
        self._stop_reasons = self._rank0(reasons)
        self.stopped_early = bool(self._stop_reasons)

    def _rank0(self, value):
        """Rank 0's value on every rank (decisions must agree under DDP)."""
        if not self.is_ddp:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def apply_op_pruning(self, alive: torch.Tensor) -> None:
        """Prune ops everywhere: alive mask, op modules, both optimisers (state of surviving parameters kept) and,
        when modules were removed, the DDP wrapper (its parameter list changed)."""
        net = self._unwrap()
        before = int(net.arch.alive_ops.sum()) if net.arch.alive_ops is not None else net.arch.op_logits.numel()
        removed = prune_search_network(net, alive)
        self.optimizer = rebuild_optimizer(self.optimizer, net.weight_parameters())
        # same schedule over the new optimiser; on_train_epoch_start sets the epoch's learning rate
        self.lr_scheduler = PolyLRScheduler(self.optimizer, self.lr_scheduler.initial_lr, self.num_epochs)
        self.arch_optimizer = rebuild_optimizer(self.arch_optimizer, net.arch_parameters())
        if removed and isinstance(self.network, DDP):
            self.network = None  # the old wrapper and its hooks on the parameters go before the new one is made
            self.network = self._make_ddp(net)
        self.print_to_log_file(f"operation pruning: {before - int(net.arch.alive_ops.sum())} candidate ops pruned, "
                               f"{removed} op modules removed, {int(net.arch.alive_ops.sum())} alive")

    def plot_history(self) -> None:
        try:
            if self.method.plot_history is not None:
                self.method.plot_history(self.arch_history, os.path.join(self.output_folder,
                                                                         self.method.output_file("trajectories")),
                                         self._unwrap(), self.cfg)
        except Exception as e:  # noqa: BLE001 - a picture must never stop a search
            self.print_to_log_file(f"could not draw architecture trajectories: {e}")
        for s in self.strategies:
            try:
                s.plot(self.output_folder)
            except Exception as e:  # noqa: BLE001
                self.print_to_log_file(f"could not draw the {s.name} picture: {e}")

    def export_result(self) -> None:
        from nnunet_nas.nnunet.export import export_from_checkpoint
        path = os.path.join(self.output_folder, "checkpoint_final.pth")
        if self.disable_checkpointing or not os.path.isfile(path):
            self.print_to_log_file("no final checkpoint written: nothing to export")
            return
        name = export_from_checkpoint(path, name=self.export_name, overwrite=self.export_name is not None,
                                      log=self.print_to_log_file)
        self.print_to_log_file(f"Train the found architecture with: nnUNetv2_train {self.plans_manager.dataset_name} "
                               f"{name} {self.fold}")

    # ------------------------------------------------------------------ checkpoints
    def _search_settings(self) -> dict:
        """What defines the search space and its search: method, op set, config."""
        return {"method": self.method.name, "search_config": self.cfg.to_dict(),
                "op_set": self.method.op_set_for(self.cfg, len(self.configuration_manager.patch_size))}

    def _search_state(self) -> dict:
        net = self._unwrap()
        return {
            **self._search_settings(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "arch_grad_scaler": self.arch_grad_scaler.state_dict() if self.arch_grad_scaler is not None else None,
            "arch_steps_done": self.arch_steps_done,
            "arch_history": self.arch_history,
            "weighting": net.weighting.state_dict(),
            "strategies": [s.state_dict() for s in self.strategies],
            "stopped_early": self.stopped_early,
            "host_checkpoint": self.host_checkpoint,
            "geometry": None if self.space_geometry is None else self.space_geometry.to_dict(),
            "fit": self.search_fit.to_dict(),
            "rng": get_rng_state(),
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        with atomic_path(filename) as tmp:  # an interrupted save never corrupts the previous checkpoint
            super().save_checkpoint(tmp)
            checkpoint = read_checkpoint(tmp)
            checkpoint[SEARCH_STATE_KEY] = self._search_state()
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = read_checkpoint(filename_or_checkpoint)
        state = checkpoint.get(SEARCH_STATE_KEY)
        if not isinstance(state, dict):
            raise InputFileError(f"{filename_or_checkpoint} holds no architecture-search state: it was not written by "
                                 f"{type(self).__name__}. Resume a search only from its own checkpoints.")
        cm = self.configuration_manager
        recorded = SearchFit.from_dict(state["fit"]) if state.get("fit") else SearchFit.as_planned(
            self._batch_per_gpu(), cm.patch_size, "a checkpoint written without a fit")
        if not self.was_initialized:  # the checkpoint's search batch, patch and width, whatever the card
            self.search_fit, self.cfg = recorded, recorded.applied_to(self.cfg)
        differing = differing_settings(state, self._search_settings())
        if differing:
            raise ConfigError(f"{filename_or_checkpoint} was written by a search with other settings than "
                              f"{type(self).__name__}'s, so --c cannot resume it: {'; '.join(differing)}. Resume with "
                              f"the trainer that wrote it (-tr {checkpoint.get('trainer_name')}), or start a new "
                              f"search without --c.")
        if not self.was_initialized:
            self.initialize()
        elif recorded != self.search_fit:
            raise ConfigError(f"{filename_or_checkpoint} was searched at another batch, patch or width than this "
                              f"trainer was initialised at; load the checkpoint before initialize().")
        self.print_to_log_file(f"resuming at the checkpoint's search batch {recorded.batch_size} and patch "
                               f"{list(recorded.patch_size)}{recorded.width}")
        alive = next((v for k, v in checkpoint["network_weights"].items() if k.endswith("arch.alive_ops")), None)
        if alive is not None:  # a pruned search: prune the fresh network the same way before loading into it
            self.apply_op_pruning(alive)
        super().load_checkpoint(filename_or_checkpoint)  # nnU-Net 2.8.1 reads only file names correctly
        logged = self.logger.local_logger.my_fantastic_logging  # a checkpoint of a version that logged fewer keys
        for key in self.history_keys:
            logged.setdefault(key, [float("nan")] * len(logged["train_losses"]))
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        if self.arch_grad_scaler is not None and state["arch_grad_scaler"] is not None:
            self.arch_grad_scaler.load_state_dict(state["arch_grad_scaler"])
        self.arch_steps_done = state["arch_steps_done"]
        self.arch_history = state["arch_history"]
        self._unwrap().weighting.load_state_dict(state.get("weighting", {}))
        for s, s_state in zip(self.strategies, state.get("strategies", [])):
            s.load_state_dict(s_state)
        self.stopped_early = state.get("stopped_early", False)
        self._pending_rng_state = state["rng"]

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net always calls this after training. The supernet is not the product: the exported configuration
        # is trained and validated with nnU-Net's own trainer.
        self.print_to_log_file("search trainer: final validation of the supernet skipped; train the exported "
                               "configuration with nnUNetv2_train to validate the found architecture")


# recorded per architecture epoch for every method, beside the method's own history keys
SIGNAL_KEYS = ("arch_argmax_changed", "arch_grad_rms", "arch_softmax_shift")


def outputs_on_host(outputs: List[dict]) -> List[dict]:
    """Train-step outputs with every tensor as the numpy array a per-step ``.cpu().numpy()`` gives, read from the
    device in one copy per key (nnU-Net collates numpy)."""
    outputs = [dict(o) for o in outputs]
    for key in {k for o in outputs for k, v in o.items() if isinstance(v, torch.Tensor)}:
        steps = [o for o in outputs if isinstance(o.get(key), torch.Tensor)]
        values = torch.stack([o[key] for o in steps]).cpu().numpy()
        for i, o in enumerate(steps):
            o[key] = values[i, ...]
    return outputs


@contextmanager
def nnunet_wraps_ddp_with(make_ddp):
    """Inside, nnU-Net's initialize makes its DDP wrapper (``DDP(network, device_ids=[rank])``, a name of its trainer
    module) as ``make_ddp(network)``: the search network is wrapped once, with the search's settings."""
    module = sys.modules[nnUNetTrainer.__module__]
    original = module.DDP
    module.DDP = lambda network, **nnunet_kwargs: make_ddp(network)
    try:
        yield
    finally:
        module.DDP = original


def make_arch_optimizer(params, cfg) -> torch.optim.Optimizer:
    """Adam for the architecture parameters (a :class:`~nnunet_nas.config.SearchConfig`'s ``arch_*`` fields), its
    weight decay coupled (L2 added to the gradient, DARTS's) or decoupled (AdamW's)."""
    decoupled = {"decoupled_weight_decay": True} if cfg.arch_decoupled_weight_decay else {}
    return torch.optim.Adam(params, lr=cfg.arch_lr, betas=tuple(cfg.arch_betas), weight_decay=cfg.arch_weight_decay,
                            **decoupled)


class requires_grad_off:
    """Context in which ``params`` do not require gradients (the graph built inside keeps that property)."""

    def __init__(self, params, enabled: bool = True):
        self.params = [p for p in params if p.requires_grad] if enabled else []

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *a):
        for p in self.params:
            p.requires_grad_(True)
        return False

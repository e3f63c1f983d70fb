"""NASSearchTrainer: the one place where architecture search meets nnUNetTrainer.

Shared by every method. It adds to nnU-Net's loop, never copies it:
* the fold's training cases are split into a weight half and an architecture half, with two nnU-Net data
  streams under the same augmentation (``get_tr_and_val_datasets`` / ``get_dataloaders``);
* first-order bi-level optimisation (DARTS): per iteration an architecture step (Adam, own GradScaler, own
  gradient clipping) on an architecture batch, then nnU-Net's own weight step (SGD + poly LR, unchanged)
  with alpha read without gradient; architecture steps start after ``warmup_fraction`` of the epochs;
* ``L_arch = L_seg + t / t_all * sum(regularisers)`` (DiNTS Eq. 11), t counted in architecture steps;
* checkpoints carry the architecture optimiser, scaler, ramp, RNG states and the per-epoch history, and are
  written atomically; ``--c`` resumes exactly (with ``nnUNet_n_proc_DA=0``, see README);
* per-epoch logging of the architecture through nnU-Net's logger, pictures next to ``progress.png``, and
  export of the result as an nnU-Net configuration at the end.

A method subclass provides ``build_network_architecture`` (a :class:`SearchNetwork`), ``arch_regularizers``,
``describe_architecture`` (per-epoch scalars and history), ``export_result`` and its config dataclass.
"""

import os
import random
from typing import Dict

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnunet_nas.nnunet.data import split_weight_arch

SEARCH_STATE_KEY = "nnunet_nas_search_state"


class NASSearchTrainer(nnUNetTrainer):
    search_config = None  # a frozen dataclass; set by the method subclass
    num_epochs_default = 80
    iterations_per_epoch = None  # None: nnU-Net's (250 / 50)
    val_iterations_per_epoch = None
    save_every_default = None
    search_seed = 12345  # [ours] searches are seeded (seed + fold): the same command finds the same architecture
    history_keys: tuple = ()  # per-epoch architecture scalars logged through nnU-Net's logger

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.num_epochs_default
        self.num_iterations_per_epoch = self.iterations_per_epoch or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch or self.num_val_iterations_per_epoch
        self.save_every = self.save_every_default or self.save_every
        self.arch_optimizer = None
        self.arch_grad_scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None
        self.arch_steps_done = 0
        self.arch_history: Dict[str, list] = {}
        self.dataloader_arch = None
        self._pending_rng_state = None
        for key in self.history_keys:
            self.logger.local_logger.my_fantastic_logging[key] = []
        self._adapt_patch_size()
        # per rank: under DDP each rank must draw different batches (DDP broadcasts rank 0's weights anyway)
        seed = self.search_seed + (fold if isinstance(fold, int) else 0) + 1000 * self.local_rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds CUDA

    # ------------------------------------------------------------------ hooks for methods
    @classmethod
    def required_patch_divisor(cls, spatial_dims: int) -> int:
        return 1

    def arch_regularizers(self, net) -> Dict[str, torch.Tensor]:
        """Unramped regulariser terms of L_arch (name -> scalar tensor)."""
        return {}

    def describe_architecture(self, net) -> Dict[str, object]:
        """Per-epoch record of the architecture (scalars for ``history_keys`` plus arrays for the history)."""
        return {}

    def export_result(self) -> None:
        """Write the genotype and register the configuration (rank 0)."""

    def plot_history(self) -> None:
        """Draw architecture trajectories next to progress.png (rank 0)."""

    # ------------------------------------------------------------------ set-up
    def _adapt_patch_size(self) -> None:
        """Round the patch up to what the search space needs, in the trainer's configuration and in the plans
        copy that training writes next to the checkpoint (so prediction with this trainer uses it too)."""
        patch = list(self.configuration_manager.patch_size)
        div = self.required_patch_divisor(len(patch))
        new = [int(np.ceil(p / div) * div) for p in patch]
        if new != patch:
            self.print_to_log_file(f"{type(self).__name__}: patch size {patch} -> {new} (divisible by {div}, as the "
                                   f"search space requires; smaller images are padded by nnU-Net)")
            self.configuration_manager.configuration["patch_size"] = new
            self.plans_manager.plans["configurations"][self.configuration_name]["patch_size"] = new

    def _do_i_compile(self):
        return False  # sampled/pruned paths would recompile; the exported network may use compile

    def _unwrap(self):
        net = self.network
        if isinstance(net, DDP):
            net = net.module
        return getattr(net, "_orig_mod", net)

    def initialize(self):
        super().initialize()
        if self.is_ddp and isinstance(self.network, DDP) and not self.network.find_unused_parameters:
            # the weight step reads alpha without gradient: DDP must tolerate parameters without gradient
            self.network = DDP(self.network.module, device_ids=[self.local_rank] if self.device.type == "cuda" else None,
                               find_unused_parameters=True)
        cfg = self.search_config
        self.arch_optimizer = torch.optim.Adam(self._unwrap().arch_parameters(), lr=cfg.arch_lr,
                                               betas=tuple(cfg.arch_betas), weight_decay=cfg.arch_weight_decay)

    def configure_optimizers(self):
        # nnU-Net's optimiser and schedule, over the weights only: alpha is excluded by construction
        net = self.network.module if isinstance(self.network, DDP) else self.network
        optimizer = torch.optim.SGD(net.weight_parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    # ------------------------------------------------------------------ data
    def get_tr_and_val_datasets(self):
        tr_keys, val_keys = self.do_split()
        weight_keys, arch_keys = split_weight_arch(tr_keys)
        self.print_to_log_file(f"architecture search: weight split {len(weight_keys)} / arch split {len(arch_keys)} "
                               f"cases; {len(val_keys)} validation cases are never used for the architecture")
        make = lambda keys: self.dataset_class(self.preprocessed_dataset_folder, keys,  # noqa: E731
                                               folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        self._dataset_arch = make(arch_keys)
        return make(weight_keys), make(val_keys)

    def get_dataloaders(self):
        dl_train, dl_val = super().get_dataloaders()
        rotation, dummy_2d, initial_patch, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        dl = nnUNetDataLoader(self._dataset_arch, self.batch_size, initial_patch, self.configuration_manager.patch_size,
                              self.label_manager, oversample_foreground_percent=self.oversample_foreground_percent,
                              sampling_probabilities=None, pad_sides=None, transforms=transforms,
                              probabilistic_oversampling=self.probabilistic_oversampling)
        n = get_allowed_n_proc_DA()
        self.dataloader_arch = SingleThreadedAugmenter(dl, None) if n == 0 else NonDetMultiThreadedAugmenter(
            dl, None, n, max(6, n // 2), None, pin_memory=self.device.type == "cuda", wait_time=0.002)
        return dl_train, dl_val

    def on_train_start(self):
        super().on_train_start()
        if self._pending_rng_state is not None:  # resume: continue the random streams where the checkpoint left them
            set_rng_state(self._pending_rng_state)
            self._pending_rng_state = None
        self.print_to_log_file(f"search: {self.warmup_epochs} warm-up epochs without architecture steps, then "
                               f"{self.num_epochs - self.warmup_epochs} epochs of bi-level optimisation; "
                               f"config {self.search_config.to_dict()}")

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
        return int(round(self.search_config.warmup_fraction * self.num_epochs))

    @property
    def arch_steps_total(self) -> int:
        return max(1, (self.num_epochs - self.warmup_epochs) * self.num_iterations_per_epoch)

    def ramp(self) -> float:
        """t / t_all of Eq. 11, t = architecture steps already taken."""
        return min(1.0, self.arch_steps_done / self.arch_steps_total)

    def train_step(self, batch: dict) -> dict:
        out = {}
        if self.current_epoch >= self.warmup_epochs:
            out.update(self.arch_step(next(self.dataloader_arch)))
        net = self._unwrap()
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
        amp = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else _null()
        params = list(net.arch_parameters())
        # The architecture step needs no weight gradients: skipping them saves a third of the backward pass.
        # Under DDP every parameter's requires_grad must stay fixed after wrapping, so there they are computed.
        with _frozen(net.weight_parameters(), enabled=not isinstance(self.network, DDP)):
            with amp:
                seg = self.loss(self.network(data), target)
            regs = {k: v.float() for k, v in self.arch_regularizers(net).items()}  # fp32, outside autocast
            loss = seg + ramp * sum(regs.values()) if regs else seg
            if self.arch_grad_scaler is not None:
                self.arch_grad_scaler.scale(loss).backward()
                self.arch_grad_scaler.unscale_(self.arch_optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.search_config.arch_grad_clip)
                self.arch_grad_scaler.step(self.arch_optimizer)
                self.arch_grad_scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.search_config.arch_grad_clip)
                self.arch_optimizer.step()
        for p in params:
            p.grad = None  # keep alpha out of the weight step's gradient clipping
        net.arch.check_finite()
        self.arch_steps_done += 1
        logs = {"arch_loss": loss.detach().cpu().numpy()}
        logs.update({f"reg_{k}": v.detach().cpu().numpy() for k, v in regs.items()})
        return logs

    # ------------------------------------------------------------------ epoch end: record the architecture
    def on_epoch_end(self):
        if self.local_rank == 0:  # alpha is identical on every rank (DDP): rank 0 decodes, logs and draws
            record = self.describe_architecture(self._unwrap())
            for key in self.history_keys:
                self.logger.log(key, float(record[key]), self.current_epoch)
            for key, value in record.items():
                self.arch_history.setdefault(key, []).append(value)
            self.arch_history.setdefault("epoch", []).append(self.current_epoch)
            summary = ", ".join(f"{k} {float(record[k]):.4g}" for k in self.history_keys)
            self.print_to_log_file(f"architecture: ramp {self.ramp():.3f}, {summary}")
        super().on_epoch_end()
        if self.local_rank == 0:
            self.plot_history()

    # ------------------------------------------------------------------ checkpoints
    def _search_state(self) -> dict:
        return {
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "arch_grad_scaler": self.arch_grad_scaler.state_dict() if self.arch_grad_scaler is not None else None,
            "arch_steps_done": self.arch_steps_done,
            "arch_history": self.arch_history,
            "search_config": self.search_config.to_dict(),
            "rng": get_rng_state(),
        }

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        tmp = f"{filename}.tmp{os.getpid()}"
        super().save_checkpoint(tmp)
        checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
        checkpoint[SEARCH_STATE_KEY] = self._search_state()
        torch.save(checkpoint, tmp)
        os.replace(tmp, filename)  # atomic: an interrupted save never corrupts the previous checkpoint

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
        state = checkpoint.get(SEARCH_STATE_KEY)
        if state is None:
            raise RuntimeError(f"{filename_or_checkpoint} holds no architecture-search state: it was not written by "
                               f"{type(self).__name__}. Resume a search only from its own checkpoints.")
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        if self.arch_grad_scaler is not None and state["arch_grad_scaler"] is not None:
            self.arch_grad_scaler.load_state_dict(state["arch_grad_scaler"])
        self.arch_steps_done = state["arch_steps_done"]
        self.arch_history = state["arch_history"]
        self._pending_rng_state = state["rng"]

    def perform_actual_validation(self, save_probabilities: bool = False):
        # nnU-Net always calls this after training. The supernet is not the product: the exported configuration
        # is trained and validated with nnU-Net's own trainer.
        self.print_to_log_file("search trainer: final validation of the supernet skipped; train the exported "
                               "configuration with nnUNetv2_train to validate the found architecture")


class _frozen:
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


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def get_rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""The search trainer of every registered method, in-process on the CPU (the trainer-side contract beside
tests/contract): nnU-Net's own trainer lookup finds it, it builds on the tiny planned dataset, takes one architecture
step and one weight step, saves a checkpoint, and a fresh trainer loading that checkpoint has the same architecture
parameters, weights and optimiser states. Each runs under a memory target its planned search exceeds: the memory fit
makes the search batch or patch smaller, both data streams deliver it, and the resume keeps it whatever the target.
A new method gets this for free once it adds its tiny trainer to ``SEARCH_TEST_TRAINERS``."""

import os

import pytest
import torch

from helpers import DATASET_NAME, SEARCH_TEST_TRAINERS, fake_trained_host
from nnunet_nas.memory_fit import GIB, MEMORY_ENV
from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY, read_checkpoint
from nnunet_nas.registry import get_method, method_names


def test_every_registered_method_has_a_tiny_search_trainer():
    assert sorted(SEARCH_TEST_TRAINERS) == method_names()


def _trainer(name, configuration):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(DATASET_NAME, configuration, 0, name, device=torch.device("cpu"))


def _state(trainer):
    net = trainer._unwrap()
    return {"arch": {k: v.clone() for k, v in net.arch.state_dict().items()},
            "weights": {k: v.clone() for k, v in net.state_dict().items()},
            "arch_optimizer": trainer.arch_optimizer.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "weighting": net.weighting.state_dict(), "arch_steps_done": trainer.arch_steps_done}


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("method", method_names())
def test_search_trainer_steps_saves_loads_and_resumes_as_the_uninterrupted_run(method, nnunet_in_process, tmp_path,
                                                                              monkeypatch):
    name, configuration = SEARCH_TEST_TRAINERS[method]
    trainer = _trainer(name, configuration)
    assert trainer.nas_method == method
    if trainer.method.trained_host:
        fake_trained_host(nnunet_in_process, configuration)
    cm = trainer.configuration_manager
    planned = trainer.estimate_search_memory(cm.batch_size, cm.patch_size)
    monkeypatch.setenv(MEMORY_ENV, str((planned.peak - 0.5 * planned.activations) / GIB))  # the fit must act
    trainer.on_train_start()
    fit = trainer.search_fit
    assert fit.changed and fit.estimate_bytes <= fit.target_bytes < fit.planned_estimate_bytes, fit
    assert (cm.batch_size, list(cm.patch_size)) == (fit.batch_size, list(fit.patch_size))
    for stream in (trainer.dataloader_train, trainer.dataloader_arch):
        assert tuple(next(stream)["data"].shape[2:]) == tuple(fit.patch_size)
    trainer.current_epoch = trainer.warmup_epochs  # an epoch with architecture steps
    trainer.on_train_epoch_start()
    before = _state(trainer)
    out = trainer.train_step(next(trainer.dataloader_train))
    assert torch.isfinite(torch.as_tensor(out["loss"])) and torch.isfinite(torch.as_tensor(out["arch_loss"]))
    after = _state(trainer)
    assert after["arch_steps_done"] == 1
    assert any(not torch.equal(before["arch"][k], after["arch"][k]) for k in after["arch"]), "alpha did not move"
    assert after["arch_optimizer"]["state"] and after["optimizer"]["state"]
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    assert read_checkpoint(path)[SEARCH_STATE_KEY]["method"] == method

    monkeypatch.setenv(MEMORY_ENV, "off")  # another card: the resume keeps the checkpoint's search batch and patch
    fresh = _trainer(name, configuration)
    fresh.load_checkpoint(path)
    assert fresh.search_fit == fit and list(fresh.configuration_manager.patch_size) == list(fit.patch_size)
    _assert_same(_state(fresh), after, method)
    # resumed equals uninterrupted: the next step (same batch) from the loaded state is the original trainer's
    fresh.on_train_start()  # restores the random streams where the checkpoint left them
    fresh.current_epoch = trainer.current_epoch
    fresh.on_train_epoch_start()
    batch, arch_batch = next(trainer.dataloader_train), next(trainer.dataloader_arch)  # the same data for both
    for t in (trainer, fresh):
        t.dataloader_arch = iter([arch_batch])
        torch.manual_seed(7)  # dropout and the like: the same global stream for both
        t.train_step(batch)
    _assert_same(_state(fresh), _state(trainer), f"{method} after the resumed step")


@pytest.mark.parametrize("method", method_names())
def test_a_random_architecture_of_the_search_space_registers_as_the_found_one_does(method, nnunet_in_process):
    """``nnunet-nas export --random SEED``: the control a study trains beside a found architecture is drawn from the
    search's space, not from its result (the same draw whatever alpha learned), and registered by the same export:
    the found one's network class, geometry, width rule (fitted to the same memory share) and trained start."""
    import json
    from nnunet_nas.genotypes.schema import load_genotype
    from nnunet_nas.nnunet.export import export_from_checkpoint
    from nnunet_nas.nnunet.plans_io import load_plans
    name, configuration = SEARCH_TEST_TRAINERS[method]
    trainer = _trainer(name, configuration)
    if trainer.method.trained_host:
        fake_trained_host(nnunet_in_process, configuration)
    trainer.initialize()
    os.makedirs(trainer.output_folder, exist_ok=True)
    path = os.path.join(trainer.output_folder, "checkpoint_final.pth")
    logs = {}

    def export(key, **kw):
        logs[key] = []
        return export_from_checkpoint(path, log=logs[key].append, **kw)
    trainer.save_checkpoint(path)
    found = export("found")
    random0 = export("random0", random_seed=0)
    assert random0 == f"{configuration}_{method}_random0"
    with torch.no_grad():  # another search result in the same space: the random draw does not follow it
        for p in trainer._unwrap().arch.parameters():
            p.add_(torch.randn_like(p))
    trainer.save_checkpoint(path)
    again = export("again", random_seed=0, name="random0_again")
    genotypes = {k: load_genotype(os.path.join(trainer.output_folder, f"{method}_genotype{suffix}.json"))
                 for k, suffix in (("found", ""), ("random0", "_random0"))}
    assert genotypes["random0"].provenance["random_draw"]["seed"] == 0
    assert "convergence" not in genotypes["random0"].provenance  # the search's figure is not the random one's
    plans = load_plans(os.path.join(os.environ["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json"))
    blocks = {k: plans["configurations"][c]["architecture"] for k, c in
              (("found", found), ("random0", random0), ("again", again))}
    assert blocks["again"] == blocks["random0"]
    assert blocks["random0"]["network_class_name"] == blocks["found"]["network_class_name"]
    kw = {k: b["arch_kwargs"] for k, b in blocks.items()}
    for key in ("strides", "kernel_sizes", "host_checkpoint", "host_arch_kwargs"):
        assert kw["random0"].get(key) == kw["found"].get(key), key
    if trainer.method.export_memory_share is not None and trainer.cfg.export_channel_mul is None:
        # both fitted to the same share of nnU-Net's memory
        assert all(any(line.startswith("width fitted to") for line in logs[k]) for k in ("found", "random0")), logs
    elif "channel_mul" in kw["found"]:  # the width the config pins
        assert kw["random0"]["channel_mul"] == kw["found"]["channel_mul"]
    assert not any("close to a random draw" in line for line in logs["random0"]), logs["random0"]
    json.dumps(genotypes["random0"].to_dict())  # a genotype file like any other


@pytest.mark.e2e
def test_gpu_acceptance_script_rehearses_on_the_cpu(tmp_path):
    """benchmarks/gpu_acceptance.py --device cpu --tiny: every registered method's search iteration, memory fit and
    compiled fixed network runs, so the one GPU shot does not die on a typo."""
    import json
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "gpu.json"
    # --budget-s: the GPU shot's time budget; the rehearsal runs everything, on a loaded machine too
    p = subprocess.run([sys.executable, os.path.join(repo, "benchmarks", "gpu_acceptance.py"), "--device", "cpu",
                        "--tiny", "--geometry", "plan", "isotropic", "--out", str(out), "--budget-s", "1e6"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.load(open(out))
    runs = [r for r in report["runs"] if "fit_for_gib" not in r and "compile_backend" not in r]
    fits = [r for r in report["runs"] if "fit_for_gib" in r]
    compiles = [r for r in report["runs"] if "compile_backend" in r]
    # every method's sampled fixed network compiles (aot_eager here): no graph break, no recompile while training
    assert sorted(r["method"] for r in compiles) == method_names()
    for r in compiles:
        assert r["graph_breaks"] == 0 and r["frames_after_training"] == 2, r
        assert r["relative_difference_fp32"] < 1e-3 and r["seconds_per_iteration_compiled"] > 0, r
    assert "skipped_after_budget" not in report
    # the memory fit for 60 % of the planned activations: every method fits and runs at its choice
    assert sorted(r["method"] for r in fits) == method_names()
    for r in fits:
        assert r["fits"] and r["fit"]["estimate_bytes"] <= r["fit"]["target_bytes"], r
        assert r["run"]["search_patch"] == r["fit"]["patch_size"] and r["run"]["seconds_per_iteration"] > 0, r
    own_geometry = [n for n in method_names() if get_method(n).search_downsamplings is not None]
    assert sorted(r["method"] for r in runs) == sorted(method_names() + own_geometry + ["nnunet_plainconvunet"])
    by_geometry = {(r["method"], r.get("geometry")): r["search_patch"] for r in runs}
    assert by_geometry["dints", "plan"] == [4, 16, 16] and by_geometry["dints", "isotropic"] == [4, 16, 16]
    assert all(r["seconds_per_iteration"] > 0 and "oom" not in r for r in runs), runs
    assert all(r["estimate_gib"] > 0 for r in runs if r["method"] != "nnunet_plainconvunet"), runs


def test_a_narrowed_search_builds_its_width_and_resumes_at_it(nnunet_in_process, tmp_path, monkeypatch):
    """The fit's last resort: the trainer builds its search network at the narrowed width (its own config, not the
    class's), records it, and a fresh trainer resumes at it (the checkpoint's search_config holds the narrowed
    width, which is then no differing setting)."""
    from nnunet_nas.memory_fit import SearchFit
    name, configuration = SEARCH_TEST_TRAINERS["dints"]
    trainer = _trainer(name, configuration)
    cm = trainer.configuration_manager
    full = sum(p.numel() for p in trainer.build_network_architecture(
        trainer.plans_manager, cm, 1, trainer.label_manager.num_segmentation_heads).parameters())
    narrow = SearchFit(cm.batch_size, tuple(cm.patch_size), cm.batch_size, tuple(cm.patch_size), 1, 2, 1, "test",
                       width_scale=0.5, width_field="channel_mul")
    monkeypatch.setattr(type(trainer), "fit_memory", lambda self: narrow)
    trainer.on_train_start()
    assert trainer.cfg.channel_mul == type(trainer).search_config.channel_mul * 0.5
    assert sum(p.numel() for p in trainer._unwrap().parameters()) < 0.5 * full
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    monkeypatch.setenv(MEMORY_ENV, "off")
    fresh = _trainer(name, configuration)
    fresh.load_checkpoint(path)
    assert fresh.search_fit == narrow and fresh.cfg == trainer.cfg
    _assert_same(_state(fresh), _state(trainer), "narrowed")


def test_a_checkpoint_without_a_fit_resumes_at_the_configurations_batch_and_patch(nnunet_in_process, tmp_path,
                                                                                  monkeypatch):
    """A search run with the fit off, or written before the fit existed (no "fit" in its state), resumes at the
    configuration's batch and patch even where today's target would shrink them: the fit is never redone on --c."""
    name, configuration = SEARCH_TEST_TRAINERS["dints"]
    monkeypatch.setenv(MEMORY_ENV, "off")
    trainer = _trainer(name, configuration)
    planned = (trainer.configuration_manager.batch_size, list(trainer.configuration_manager.patch_size))
    trainer.on_train_start()
    assert not trainer.search_fit.changed and trainer.search_fit.estimate_bytes is None
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)
    legacy = read_checkpoint(path)
    del legacy[SEARCH_STATE_KEY]["fit"]
    legacy_path = str(tmp_path / "legacy.pth")
    torch.save(legacy, legacy_path)
    monkeypatch.setenv(MEMORY_ENV, "0.000001")  # a card nothing fits: a fresh search would stop with an error
    for checkpoint in (path, legacy_path):
        fresh = _trainer(name, configuration)
        fresh.load_checkpoint(checkpoint)
        cm = fresh.configuration_manager
        assert (cm.batch_size, list(cm.patch_size)) == planned and not fresh.search_fit.changed
        _assert_same(_state(fresh)["weights"], _state(trainer)["weights"], checkpoint)


def test_counting_the_memory_leaves_the_searchs_random_stream_alone(nnunet_in_process, monkeypatch):
    """The same command finds the same architecture whether or not the fit counted (and however many candidates it
    counted): the networks it builds draw from a forked random stream."""
    name, configuration = SEARCH_TEST_TRAINERS["dints"]
    weights = []
    for target in ("off", "1000"):  # no count; one count (a roomy target)
        monkeypatch.setenv(MEMORY_ENV, target)
        trainer = _trainer(name, configuration)
        trainer.initialize()
        weights.append(_state(trainer)["weights"])
    _assert_same(weights[0], weights[1], "initial weights")


@pytest.mark.parametrize("name, schedule", [("nnUNetTrainerNASDemo", (20, 25, 5)),
                                            ("nnUNetTrainerNAS_20x50", (20, 50, 10))])
def test_a_short_schedule_saves_its_latest_checkpoint_every_epoch(name, schedule, nnunet_in_process):
    # nnU-Net saves checkpoint_latest every 50 epochs; a 20-epoch training killed at epoch 19 would resume from its
    # best epoch with --c, not its last
    trainer = _trainer(name, "2d")
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == schedule
    assert trainer.save_every == 1


@pytest.mark.parametrize("method", method_names())
def test_a_search_saves_its_latest_checkpoint_every_epoch(method, nnunet_in_process):
    # the package's search of 80-200 epochs, cut off by a scheduler's limit, resumes from its last epoch
    from nnunet_nas.nnunet.trainers import default_search_trainer
    trainer = _trainer(default_search_trainer(method), "2d")
    assert trainer.nas_method == method and trainer.num_epochs >= 80 and trainer.save_every == 1


def test_every_shipped_trainer_is_exported_under_its_name_and_its_search_config_holds():
    """What nnU-Net's lookup finds through the shim: each name of ``__all__`` is its class's own name, and every
    search trainer's config passes its checks (a variant's mistake shows here, not at a user's first step)."""
    from nnunet_nas.nnunet import trainers
    from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
    for name in trainers.__all__:
        cls = getattr(trainers, name)
        assert cls.__name__ == name
        if issubclass(cls, NASSearchTrainer):
            _, cfg = cls.method_and_config()
            cfg.validate(source=name)
    # SCNAS's variant in nnU-Net's budget differs from the paper's settings only by its memory term and the width
    # at which that term can be met
    from dataclasses import replace
    scnas = trainers.nnUNetTrainerSCNASSearch_nnunetBudget.method_and_config()[1]
    assert scnas == replace(trainers.nnUNetTrainerSCNASSearch.method_and_config()[1], memory_budget=1.0,
                            channel_mul=0.25)


def test_every_shipped_memory_budget_in_nnunets_terms_is_one_an_architecture_meets(planned_dataset):
    """At the 3d_fullres configuration nnU-Net's own planner made, every shipped search trainer that budgets in
    nnU-Net's terms asks for a memory some architecture of its space meets at the width it counts (the search's own
    check passes), and a budget below the space's floor is refused with the width that would meet it. (The floor's
    share of nnU-Net's memory is about the same in 2d: 0.23 against 0.20 for DiNTS on MSD Hippocampus.)"""
    from dataclasses import replace
    from types import SimpleNamespace

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_nas.errors import ConfigError
    from nnunet_nas.nnunet import trainers
    from nnunet_nas.nnunet.search_memory import count_export_memory
    from nnunet_nas.nnunet.search_trainer import NASSearchTrainer
    from nnunet_nas.planned_network import PlannedNetwork
    plans = os.path.join(planned_dataset[1]["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")
    planned = PlannedNetwork.from_configuration_manager(PlansManager(plans).get_configuration("3d_fullres"))
    checked, counts = set(), {}  # one count per space and width: the budget fields do not change it
    for name in trainers.__all__:
        cls = getattr(trainers, name)
        if not issubclass(cls, NASSearchTrainer):
            continue
        method, cfg = cls.method_and_config()
        if method.count_export_memory is None or getattr(cfg, "sigma", cfg.memory_budget) is None:
            continue
        space = {k: v for k, v in cfg.to_dict().items() if k not in ("memory_budget", "memory_penalty", "jsd_pruning")}
        key = (method.name, repr(sorted(space.items())))
        if key not in counts:
            counts[key] = count_export_memory(method, cfg, planned, 1, 3)
        if counts[key] is None:  # a budget in the space's own terms: checked against the space at the search's start
            continue
        net = SimpleNamespace(export_memory=counts[key])
        method.check_search(net, cfg)
        checked.add(method.name)
        with pytest.raises(ConfigError, match=r"memory_budget=.* is below the smallest architecture .*channel_mul="):
            method.check_search(net, replace(cfg, memory_budget=counts[key].min_ratio() / 2))
    assert checked == {"dints", "dast", "scnas"}

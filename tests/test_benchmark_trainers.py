"""The benchmark's trainer variants (benchmarks/trainers) are valid nnU-Net trainers before hours of CPU are spent on
them: nnU-Net finds a trainer by its bare class name across every folder of ``nnUNet_extTrainer``, so names are unique
and carry no ``__`` (the results folder's separator), and every search variant's config passes the checks its search
runs at start."""

import importlib.util
import inspect
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(folder, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainers(module, own_only=True):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    return {n: c for n, c in vars(module).items() if inspect.isclass(c) and issubclass(c, nnUNetTrainer)
            and (c.__module__ == module.__name__ or not own_only)}


BENCH = _trainers(_module(os.path.join("benchmarks", "trainers"), "nnunet_nas_bench_trainers"))


def test_benchmark_trainer_names_are_unique_and_usable_by_nnunet():
    shims = set()
    for file in os.listdir(os.path.join(REPO, "trainers")):
        if file.endswith(".py") and not file.startswith("_"):
            shims |= set(_trainers(_module("trainers", file[:-3]), own_only=False))  # the shims re-export
    assert "nnUNetTrainerDiNTSSearch" in shims and BENCH and not set(BENCH) & shims
    assert not [n for n in BENCH if "__" in n]


@pytest.mark.parametrize("name", sorted(n for n, c in BENCH.items() if getattr(c, "nas_method", None)))
def test_every_benchmark_search_variant_has_a_valid_config(name):
    trainer = BENCH[name]
    method, cfg = trainer.method_and_config()
    dims = 2 if "2D" in name else 3
    cfg.validate(spatial_dims=dims, source=f"{name}.search_config")
    method.op_set_for(cfg, dims)


def test_a_second_seed_variant_differs_from_its_search_only_in_the_seed():
    seconds = {n: c for n, c in BENCH.items() if n.endswith("_seed2")}
    assert seconds
    for name, trainer in seconds.items():
        first = BENCH[name[:-len("_seed2")]]
        assert trainer.__bases__ == (first,) and trainer.search_seed != first.search_seed
        assert {k for k in vars(trainer) if not k.startswith("__")} == {"search_seed"}

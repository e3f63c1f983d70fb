"""Bad input, as a hostile but realistic user gives it: one clear error naming the problem and the fix, exit code 2,
and nothing lost: every file that existed before is byte-identical afterwards and no file appears (the plans lock
file apart).

Most cases run the CLI's entry function in-process on a small copy of a real finished search (plans, dataset.json,
search checkpoints and genotype files); a few run inside a real short ``nnUNetv2_train``. The concurrency and kill
tests run the plans writer in subprocesses.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional

import pytest
import torch

from helpers import DATASET_NAME, copy_work, nnunet_env, one_error_line, point_nnunet_at, run_cli, run_main
from nnunet_nas import cli
from nnunet_nas.config import DASTSearchConfig, DiNTSSearchConfig, IACSearchConfig, SCNASSearchConfig, SearchConfig
from nnunet_nas.errors import ConfigError
from nnunet_nas.genotypes.cell import CellGenotype
from nnunet_nas.registry import get_method, method_names
from nnunet_nas.strategies.jsd_pruning import JSDRule

SEARCH = "nnUNetTrainerDiNTSSearchTest"


# ---------------------------------------------------------------------------------------------------- workspace
@dataclass
class Workspace:
    root: str

    @property
    def pre(self):
        return os.path.join(self.root, "nnUNet_preprocessed", DATASET_NAME)

    @property
    def plans(self):
        return os.path.join(self.pre, "nnUNetPlans.json")

    @property
    def results(self):
        return os.path.join(self.root, "nnUNet_results")

    @property
    def fold(self):
        return os.path.join(self.results, DATASET_NAME, f"{SEARCH}__nnUNetPlans__3d_fullres", "fold_0")

    def file(self, name, content) -> str:
        """Write an input file under ``inputs/`` (bytes or text) and return its path."""
        path = os.path.join(self.root, "inputs", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
        return path

    def edit_plans(self, change):
        with open(self.plans) as f:
            plans = json.load(f)
        change(plans)
        with open(self.plans, "w") as f:
            json.dump(plans, f)


@pytest.fixture
def ws(dints_search, tmp_path, monkeypatch):
    """A small copy of a finished search: the plans folder without the preprocessed cases, the search fold's
    checkpoints and outputs; nnU-Net's paths point at it in this process."""
    source = dints_search[0]
    w = Workspace(str(tmp_path / "ws"))
    src_pre = os.path.join(source, "nnUNet_preprocessed", DATASET_NAME)
    os.makedirs(w.pre)
    for f in os.listdir(src_pre):
        if os.path.isfile(os.path.join(src_pre, f)) and f.endswith(".json"):
            shutil.copy2(os.path.join(src_pre, f), w.pre)
    shutil.copytree(os.path.join(source, "nnUNet_results", DATASET_NAME, f"{SEARCH}__nnUNetPlans__3d_fullres",
                                 "fold_0"), w.fold)
    os.makedirs(os.path.join(w.root, "nnUNet_raw", DATASET_NAME))
    point_nnunet_at(monkeypatch, nnunet_env(w.root))
    return w


def snapshot(root) -> dict:
    """``{relative path: sha256}`` of every file under ``root`` (the plans lock file left out: it is created once and
    kept, empty)."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".lock"):
                continue
            path = os.path.join(folder, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


class Evil:
    """A pickle that runs code when unpickled: it would create the file named in ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_file(w: Workspace, name: str) -> str:
    marker = os.path.join(w.root, "inputs", "PWNED")
    path = os.path.join(w.root, "inputs", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"network_weights": {}, "payload": Evil(marker)}, path)
    return path


# ---------------------------------------------------------------------------------------------------- inputs
def grid_genotype_dict():
    from nnunet_nas.cli import published_genotype_path
    with open(published_genotype_path()) as f:
        return json.load(f)


def genotype_file(w, change: Optional[Callable] = None, raw: Optional[str] = None):
    if raw is not None:
        return w.file("genotype.json", raw)
    d = grid_genotype_dict()
    if change is not None:
        change(d)
    return w.file("genotype.json", json.dumps(d))


def cell_genotype_file(w, change=None):
    """An IAC genotype (one shared 'fusion' cell of 2 nodes), with ``change(dict)`` applied."""
    g = CellGenotype.from_edge_ops("darts_3d", {"fusion": ["skip", "sep_conv_3", "skip", "dil_conv_3", "skip"]},
                                   num_nodes=2, provenance={"method": "iac"})
    d = g.to_dict()
    if change is not None:
        change(d)
    return w.file("cell_genotype.json", json.dumps(d))


def monai_json(w, change=None):
    from nnunet_nas.genotypes.monai_compat import to_monai_codes
    from nnunet_nas.genotypes.schema import load_genotype
    from nnunet_nas.cli import published_genotype_path
    node_a, code_a, code_c = to_monai_codes(load_genotype(published_genotype_path()))
    d = {"node_a": node_a.tolist(), "arch_code_a": code_a.tolist(), "arch_code_c": code_c.tolist()}
    if change is not None:
        change(d)
    return w.file("arch_code.json", json.dumps(d))


def search_checkpoint_with(w, change) -> str:
    """A copy of the search's final checkpoint with ``change(checkpoint)`` applied."""
    from nnunet_nas.nnunet.search_state import read_checkpoint
    ckpt = read_checkpoint(os.path.join(w.fold, "checkpoint_final.pth"))
    change(ckpt)
    path = os.path.join(w.root, "inputs", "search.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(ckpt, path)
    return path


def trained_plain_checkpoint(w) -> str:
    """An nnU-Net checkpoint of a plain trained model (no architecture search)."""
    path = os.path.join(w.root, "inputs", "plain_checkpoint_final.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"network_weights": {"encoder.stages.0.weight": torch.zeros(2)}, "init_args": {"fold": 0},
                "trainer_name": "nnUNetTrainer", "current_epoch": 1}, path)
    return path


def set_nested(d, keys, value):
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def with_trained_fold(w, name):
    """A trained model of configuration ``name`` in nnUNet_results."""
    fold = os.path.join(w.results, DATASET_NAME, f"nnUNetTrainer__nnUNetPlans__{name}", "fold_0")
    os.makedirs(fold)
    with open(os.path.join(fold, "checkpoint_final.pth"), "wb") as f:
        f.write(b"trained")
    return fold


def register_other_dints(w, name):
    """Register the published DiNTS architecture as ``name`` (a configuration of ours holding another
    architecture than the one the cases register)."""
    d = grid_genotype_dict()
    d["ops"][0] = [o if o is None else "conv_3x3x3" for o in d["ops"][0]]
    path = w.file("other_genotype.json", json.dumps(d))
    assert cli.main(["add-arch", "991", "--genotype", path, "--name", name, "--channel-mul", "0.25"]) == 0


# ---------------------------------------------------------------------------------------------------- CLI cases
@dataclass
class Case:
    id: str
    argv: Callable  # Workspace -> argv
    problem: str  # regex the message must match: what is wrong
    fix: str  # regex the message must match: what to do
    setup: Optional[Callable] = None  # Workspace -> None, before the snapshot


ADD = ["add-arch", "991"]


def _add(*extra):
    return lambda w: ADD + list(extra)


def _add_genotype(make, *extra):
    return lambda w: ADD + ["--genotype", make(w)] + list(extra)


def _export(*extra, checkpoint=lambda w: os.path.join(w.fold, "checkpoint_final.pth")):
    return lambda w: ["export", checkpoint(w)] + list(extra)


def _plans_text(text):
    def setup(w):
        with open(w.plans, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
    return setup


def _as_2d(d):
    d.update(op_set="dints_2d", spatial_dims=2, ops=[[o and "conv_3x3" for o in row] for row in d["ops"]])


CASES = [
    # ---- nnU-Net's own configurations are never replaced (case 1 of the issue), names, bases
    Case("add-arch-replaces-3d_fullres", _add("--name", "3d_fullres", "--overwrite"), "3d_fullres.*never replaced",
         "another --name"),
    Case("add-arch-replaces-2d", lambda w: ADD + ["-c", "2d", "--name", "2d", "--overwrite", "--genotype",
                                                  genotype_file(w, _as_2d)],
         "'2d' is nnU-Net's own configuration and is never replaced", "another --name"),
    Case("add-arch-3d_fullres-no-overwrite", _add("--name", "3d_fullres"), "never replaced", "another --name"),
    Case("add-arch-replaces-a-base", _add("--name", "3d_fullres_dints", "--overwrite"), "base of another|never "
         "replaced", "another --name",
         setup=lambda w: w.edit_plans(lambda p: p["configurations"].__setitem__(
             "3d_fullres_dints_bs1", {"inherits_from": "3d_fullres_dints", "batch_size": 1}))),
    Case("add-arch-replaces-a-user-config", _add("--name", "3d_fullres_bs1", "--overwrite"), "not written by "
         "nnunet_nas|never replaced", "another --name",
         setup=lambda w: w.edit_plans(lambda p: p["configurations"].__setitem__(
             "3d_fullres_bs1", {"inherits_from": "3d_fullres", "batch_size": 1}))),
    Case("add-arch-overwrite-trained", _add("--name", "3d_fullres_mine", "--overwrite"), "has trained models.*"
         "nnUNetTrainer__nnUNetPlans__3d_fullres_mine", "another --name|move those folders",
         setup=lambda w: (register_other_dints(w, "3d_fullres_mine"), with_trained_fold(w, "3d_fullres_mine"))),
    Case("add-arch-different-without-overwrite", _add("--name", "3d_fullres_mine"), "different architecture",
         "--overwrite", setup=lambda w: register_other_dints(w, "3d_fullres_mine")),
    Case("name-with-slash", _add("--name", "a/b"), "can not be a folder name", "letters, digits"),
    Case("name-with-dunder", _add("--name", "a__b"), "must not contain '__'", "splits result folders"),
    Case("name-with-space", _add("--name", "my config"), "can not be a folder name", "no '/' or spaces"),
    Case("name-empty", _add("--name", " "), "name is empty", "--name"),
    Case("base-missing", _add("-c", "3d_nope"), "no configuration '3d_nope'", "available"),
    Case("base-of-other-dimensionality", _add("-c", "2d"), "2-D but the genotype is 3-D", "matching base"),
    Case("plans-identifier-missing", _add("-p", "MyPlans"), "No plans file", "nnUNetv2_plan_and_preprocess"),
    Case("dataset-unknown", lambda w: ["add-arch", "995"], "dataset '995'", "planned with nnUNetv2_plan"),
    # ---- the plans file
    Case("plans-not-json", _add(), "not valid JSON", "Re-plan|restore", setup=_plans_text("{configurations: oops")),
    Case("plans-not-utf8", _add(), "not UTF-8", "Re-plan|restore", setup=_plans_text(b"\xff\xfe{\x00}")),
    Case("plans-a-list", _add(), "expected an nnU-Net plans file", "Re-plan|restore", setup=_plans_text("[1, 2]")),
    Case("plans-without-configurations", _add(), "no 'configurations'", "Re-plan|restore",
         setup=_plans_text('{"dataset_name": "x"}')),
    Case("plans-with-nan", _add(), "not valid JSON|NaN", "Re-plan|restore",
         setup=_plans_text('{"configurations": {"3d_fullres": {"patch_size": [NaN]}}}')),
    Case("plans-circular", _add(), "inherit in a circle", "Restore a backup|re-plan",
         setup=lambda w: w.edit_plans(lambda p: p["configurations"]["3d_fullres"].__setitem__("inherits_from",
                                                                                              "3d_fullres"))),
    Case("plans-bad-patch", _add(), "patch_size list of positive integers", "Re-plan",
         setup=lambda w: w.edit_plans(lambda p: p["configurations"]["3d_fullres"].__setitem__("patch_size", "big"))),
    Case("dataset-json-malformed", _add(), "dataset.json", "Copy it again",
         setup=lambda w: open(os.path.join(w.pre, "dataset.json"), "w").write('{"labels": 3}')),
    # ---- CLI flags
    Case("channel-mul-nan", _add("--channel-mul", "nan"), "--channel-mul.*finite", "--help"),
    Case("channel-mul-inf", _add("--channel-mul", "inf"), "--channel-mul.*finite", "--help"),
    Case("channel-mul-negative", _add("--channel-mul", "-1"), "--channel-mul.*> 0", "--help"),
    Case("channel-mul-zero", _add("--channel-mul", "0"), "--channel-mul.*> 0", "--help"),
    Case("channel-mul-text", _add("--channel-mul", "wide"), "not a number", "--help"),
    Case("channel-mul-too-narrow", _add("--channel-mul", "0.001"), "channel_mul=0.001 gives", "larger channel_mul"),
    Case("iac-genotype-of-another-layout", _add_genotype(lambda w: cell_genotype_file(
        w, lambda d: (d.update(cell_types=["encoder_normal"], encoder_normal=d.pop("fusion")))), "--method", "iac"),
        "not an IAC genotype's", "expected 'fusion'"),
    Case("monai-and-genotype", lambda w: ADD + ["--monai", "a.json", "--genotype", "b.json"], "both name",
         "one of them"),
    Case("method-unknown", _add("--method", "enas"), "unknown NAS method 'enas'", "registered methods"),
    Case("method-mismatch", _add("--method", "scnas"), "nnunet_nas.grid genotype", "matching --method"),
    Case("host-for-a-method-without-host", _add("--host-checkpoint", "x.pth"), "does not start from a trained "
         "model", "leave it out"),
    Case("host-missing", _add_genotype(cell_genotype_file, "--method", "iac", "--host-checkpoint", "/nope/x.pth"),
         "no such file", "checkpoint"),
    Case("host-is-text", lambda w: ADD + ["--genotype", cell_genotype_file(w), "--method", "iac",
                                          "--host-checkpoint", w.file("host.pth", "not a model")],
         "cannot be read as a torch file", "nnU-Net checkpoint"),
    Case("host-is-code", lambda w: ADD + ["--genotype", cell_genotype_file(w), "--method", "iac",
                                          "--host-checkpoint", evil_file(w, "host_evil.pth")],
         "does not unpickle", "nnU-Net checkpoint"),
    Case("host-is-a-search", lambda w: ADD + ["--genotype", cell_genotype_file(w), "--method", "iac",
                                              "--host-checkpoint", os.path.join(w.fold, "checkpoint_final.pth")],
         "architecture-search checkpoint", "Train the host first"),
    # ---- genotype files
    Case("genotype-missing", _add("--genotype", "/nope/genotype.json"), "no such file", "genotype JSON"),
    Case("genotype-a-folder", lambda w: ADD + ["--genotype", w.pre], "is a folder", "genotype JSON"),
    Case("genotype-not-json", _add_genotype(lambda w: genotype_file(w, raw="{oops")), "not valid JSON",
         "genotype JSON"),
    Case("genotype-not-utf8", lambda w: ADD + ["--genotype", w.file("g.json", b'{"schema": "\xff"}')], "not UTF-8",
         "genotype JSON"),
    Case("genotype-a-list", _add_genotype(lambda w: genotype_file(w, raw="[]")), "JSON list", "genotype JSON"),
    Case("genotype-nan", _add_genotype(lambda w: genotype_file(w, raw='{"schema": NaN}')), "not valid JSON|NaN",
         "genotype JSON"),
    Case("genotype-unknown-schema", _add_genotype(lambda w: genotype_file(w, lambda d: d.update(schema="x"))),
         "schema 'x' is not a genotype schema", "add-arch --monai"),
    Case("genotype-future-version", _add_genotype(lambda w: genotype_file(w, lambda d: d.update(version=99))),
         "version 99 is not supported", "upgrade nnunet_nas"),
    Case("genotype-truncated", _add_genotype(lambda w: genotype_file(w, lambda d: d.pop("ops"))), "missing keys",
         "truncated"),
    Case("genotype-strings-for-numbers", _add_genotype(lambda w: genotype_file(
        w, lambda d: d["node_a"][0].__setitem__(0, "1"))), r"node_a\[0\]\[0\] is '1'", "0 or 1"),
    Case("genotype-edge-not-binary", _add_genotype(lambda w: genotype_file(
        w, lambda d: d["edges"][0].__setitem__(0, 2))), r"edges\[0\]\[0\] is 2", "0 or 1"),
    Case("genotype-op-a-number", _add_genotype(lambda w: genotype_file(
        w, lambda d: d["ops"][0].__setitem__(0, 3))), r"ops\[0\]\[0\] is 3", "op name or null"),
    Case("genotype-unknown-op", _add_genotype(lambda w: genotype_file(
        w, lambda d: d["ops"][0].__setitem__(d["edges"][0].index(1), "conv_9x9"))), "'conv_9x9' is not in op set",
         "dints_3d"),
    Case("genotype-num-blocks-string", _add_genotype(lambda w: genotype_file(w, lambda d: d.update(num_blocks="12"))),
         "num_blocks must be an integer", "integer"),
    Case("genotype-infeasible", _add_genotype(lambda w: genotype_file(
        w, lambda d: d["node_a"].__setitem__(1, [1 - v for v in d["node_a"][1]]))), "infeasible|disagree|node_a",
         "grid_path|exactly when"),
    Case("genotype-provenance-string", _add_genotype(lambda w: genotype_file(w, lambda d: d.update(provenance="me"))),
         "provenance must be an object", "object"),
    Case("genotype-wrong-dims", _add_genotype(lambda w: genotype_file(w, lambda d: d.update(spatial_dims=2))),
         "spatial_dims 2 disagrees", "op set"),
    Case("cell-genotype-unknown-key", _add_genotype(lambda w: cell_genotype_file(w, lambda d: d.update(fusoin=[])),
                                                    "--method", "iac"), r"unknown keys \['fusoin'\]", "one key"),
    Case("cell-genotype-rows-missing", _add_genotype(lambda w: cell_genotype_file(w, lambda d: d.pop("fusion")),
                                                     "--method", "iac"), "have no rows", "cell type"),
    Case("cell-genotype-zero-nodes", _add_genotype(lambda w: cell_genotype_file(
        w, lambda d: d.update(num_nodes=0, fusion=[])), "--method", "iac"), "num_nodes=0", "at least 1"),
    Case("cell-genotype-num-nodes-float", _add_genotype(lambda w: cell_genotype_file(
        w, lambda d: d.update(num_nodes=2.0)), "--method", "iac"), "num_nodes must be an integer", "integer"),
    # ---- MONAI arch codes
    Case("monai-code-is-code", lambda w: ADD + ["--monai", evil_file(w, "arch_code.pth")], "does not unpickle",
         "MONAI arch code"),
    Case("monai-pth-is-text", lambda w: ADD + ["--monai", w.file("arch_code.pth", "node_a=1")],
         "cannot be read as a torch file", "MONAI arch code"),
    Case("monai-json-missing-keys", lambda w: ADD + ["--monai", monai_json(w, lambda d: d.pop("arch_code_c"))],
         "missing keys", "need node_a, arch_code_a, arch_code_c"),
    Case("monai-json-op-index", lambda w: ADD + ["--monai", monai_json(w, lambda d: d["arch_code_c"][0].__setitem__(
        0, 9))], "op indices outside", r"0\.\.4"),
    Case("monai-json-fractional", lambda w: ADD + ["--monai", monai_json(w, lambda d: d["arch_code_a"][0].__setitem__(
        0, 0.5))], "whole numbers", "0/1 flags"),
    Case("monai-json-ragged", lambda w: ADD + ["--monai", monai_json(w, lambda d: d["node_a"][0].append(1))],
         "rectangular array", "numbers"),
    Case("monai-json-strings", lambda w: ADD + ["--monai", monai_json(w, lambda d: d.update(node_a=[["a"]]))],
         "finite numbers", "node_a"),
    # ---- export: checkpoints, bases, names (case 2 of the issue)
    Case("export-missing-checkpoint", _export(checkpoint=lambda w: os.path.join(w.fold, "nope.pth")),
         "no such file", "search fold folder"),
    Case("export-folder-without-checkpoints", _export(checkpoint=lambda w: w.pre), "holds none of",
         "search fold folder"),
    Case("export-text-checkpoint", _export(checkpoint=lambda w: w.file("c.pth", "hello")),
         "cannot be read as a torch file", "search checkpoint"),
    Case("export-code-checkpoint", _export(checkpoint=lambda w: evil_file(w, "c.pth")), "does not unpickle",
         "search checkpoint"),
    Case("export-plain-model", _export(checkpoint=trained_plain_checkpoint), "not an architecture-search checkpoint",
         "search trainer"),
    Case("export-base-typo", _export("--base-config", "typo"), "no configuration 'typo'", "available"),
    Case("export-best-base-typo", _export("--base-config", "typo", checkpoint=lambda w: os.path.join(
        w.fold, "checkpoint_best.pth")), "no configuration 'typo'", "available"),
    Case("export-replaces-base", _export("--name", "3d_fullres", "--overwrite"), "never replaced", "another --name"),
    Case("export-channel-mul-nan", _export("--channel-mul", "nan"), "--channel-mul.*finite", "--help"),
    Case("export-config-unknown-nested-key", _export(checkpoint=lambda w: search_checkpoint_with(
        w, lambda c: c["nnunet_nas_search_state"]["search_config"].__setitem__("jsd_pruning",
                                                                               {"window": 1, "windw": 2}))),
        r"search_config\.jsd_pruning\.windw", "spelling"),
    Case("export-config-nan-budget", _export(checkpoint=lambda w: search_checkpoint_with(
        w, lambda c: c["nnunet_nas_search_state"]["search_config"].__setitem__("memory_budget", float("nan")))),
        "memory_budget=nan", "finite number > 0"),
    Case("export-config-string-lr", _export(checkpoint=lambda w: search_checkpoint_with(
        w, lambda c: c["nnunet_nas_search_state"]["search_config"].__setitem__("arch_lr", "0.01"))),
        "arch_lr='0.01'", "finite number > 0"),
    Case("export-checkpoint-without-init-args", _export(checkpoint=lambda w: search_checkpoint_with(
        w, lambda c: c.pop("init_args"))), "lacks its init_args", "truncated"),
    # ---- demo (case 3 of the issue)
    Case("demo-fresh-foreign-folder", lambda w: ["demo", "--workdir", os.path.join(w.root, "inputs"), "--fresh"],
         "not made by nnunet-nas demo|did not write", "new or empty folder|another --workdir",
         setup=lambda w: w.file("thesis.tex", "years of work")),
    Case("demo-workdir-is-a-file", lambda w: ["demo", "--workdir", w.plans], "is a file", "folder"),
    # ---- attention
    Case("attention-fold-text", lambda w: ["attention", "-i", "x.nii.gz", "-o", "out", "-d", "991", "-c",
                                           "3d_fullres", "-f", "first"], "not a fold", "integer >= 0"),
    Case("attention-fold-negative", lambda w: ["attention", "-i", "x.nii.gz", "-o", "out", "-d", "991", "-c",
                                               "3d_fullres", "-f", "-1"], "not a fold", "integer >= 0"),
    Case("attention-center-text", lambda w: ["attention", "-i", "x.nii.gz", "-o", "out", "-d", "991", "-c",
                                             "3d_fullres", "--center", "mid"], "invalid int value", "--help"),
    Case("attention-no-model", lambda w: ["attention", "-i", "x.nii.gz", "-o", "out", "-d", "991", "-c",
                                          "3d_fullres_dast"], "no trained model there", "Train it first"),
    Case("attention-unknown-dataset", lambda w: ["attention", "-i", "x.nii.gz", "-o", "out", "-d", "995", "-c",
                                                 "3d_fullres_dast"], "dataset '995'", "planned with"),
]



@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_error_and_loses_nothing(case, ws, capsys):
    if case.setup is not None:
        case.setup(ws)
    argv = case.argv(ws)
    capsys.readouterr()
    before = snapshot(ws.root)
    rc, out, err = run_main(capsys, argv)
    line = one_error_line(rc, err, argv[0])
    assert re.search(case.problem, line), (case.problem, line)
    assert re.search(case.fix, line), (case.fix, line)
    assert snapshot(ws.root) == before, "a file was changed, removed or added"
    assert not os.path.exists(os.path.join(ws.root, "inputs", "PWNED")), "code in a user's file ran"


def test_nnunet_configurations_survive_an_overwrite_attempt_and_plans_stay_loadable(ws, capsys):
    """Case 1 of the issue, end to end: after the refused replacement nnU-Net still reads the plans."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    assert cli.main(ADD + ["--name", "3d_fullres", "--overwrite"]) == 2
    assert PlansManager(ws.plans).get_configuration("3d_fullres").patch_size


def test_export_of_an_earlier_checkpoint_keeps_the_searchs_final_files(ws, capsys):
    """Case 2 of the issue: the final genotype and picture are the search's result; an export of another checkpoint
    writes under its own name."""
    finals = {f: snapshot(ws.fold)[f] for f in ("dints_genotype.json", "dints_architecture.png")}
    assert cli.main(["export", os.path.join(ws.fold, "checkpoint_best.pth"), "--name", "3d_fullres_best"]) == 0
    after = snapshot(ws.fold)
    assert {f: after[f] for f in finals} == finals
    assert "dints_genotype_checkpoint_best.json" in after and "dints_architecture_checkpoint_best.png" in after


def test_numbered_backups_keep_the_last_few_and_the_mode(ws):
    from nnunet_nas.nnunet.plans_io import BACKUPS_KEPT, register_configuration
    os.chmod(ws.plans, 0o640)
    versions = []
    for k in range(BACKUPS_KEPT + 2):
        with open(ws.plans, "rb") as f:
            versions.append(f.read())
        register_configuration(ws.plans, "3d_fullres", f"3d_fullres_v{k}", {"network_class_name": "nnunet_nas.X",
                                                                           "k": k})
    backups = sorted((int(p.rsplit(".", 1)[1]), p) for p in os.listdir(ws.pre) if ".bak." in p)
    assert len(backups) == BACKUPS_KEPT
    newest = backups[-1][1]
    with open(os.path.join(ws.pre, newest), "rb") as f:
        assert f.read() == versions[-1]
    assert os.stat(ws.plans).st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------------- configs
BAD_CONFIGS = [
    (DiNTSSearchConfig, dict(memory_budget=float("nan")), "memory_budget=nan must be a finite number > 0"),
    (DiNTSSearchConfig, dict(memory_budget=-0.5), "memory_budget=-0.5 must be a finite number > 0"),
    (DiNTSSearchConfig, dict(channel_mul=float("inf")), "channel_mul=inf must be a finite number > 0"),
    (DiNTSSearchConfig, dict(num_depths=9), "num_depths=9 must be an integer in"),
    (DiNTSSearchConfig, dict(num_blocks=2.5), "num_blocks=2.5 must be an integer >= 1"),
    (DiNTSSearchConfig, dict(memory_reference="gpu"), "memory_reference='gpu' must be one of"),
    (DASTSearchConfig, dict(num_heads=0), "num_heads=0 must be an integer >= 1"),
    (DASTSearchConfig, dict(token_grid=0), "token_grid=0 must be an integer >= 1"),
    (SCNASSearchConfig, dict(temperature_start=0.05), "temperature_start 0.05 is below temperature_end"),
    (SCNASSearchConfig, dict(temperature_end=0.0), "temperature_end=0.0 must be a finite number > 0"),
    (SCNASSearchConfig, dict(temperature_schedule="cosine"), "temperature_schedule='cosine' must be one of"),
    (SCNASSearchConfig, dict(num_nodes=0), "num_nodes=0 must be an integer >= 1"),
    (IACSearchConfig, dict(partial_channels=0), "partial_channels=0 must be an integer >= 1"),
    (IACSearchConfig, dict(mode="both"), "mode='both' must be one of"),
    (IACSearchConfig, dict(jsd_pruning=JSDRule(window=0)), "window=0 must be an integer >= 1"),
    (IACSearchConfig, dict(jsd_pruning=JSDRule(gamma=1.5)), "gamma=1.5 must be a finite number"),
    (SearchConfig, dict(arch_lr=float("nan")), "arch_lr=nan must be a finite number > 0"),
    (SearchConfig, dict(arch_lr=0), "arch_lr=0 must be a finite number > 0"),
    (SearchConfig, dict(warmup_fraction=1.0), r"warmup_fraction=1.0 must be a finite number \[0, 1\)"),
    (SearchConfig, dict(warmup_epochs=-1), "warmup_epochs=-1 must be an integer >= 0"),
    (SearchConfig, dict(data_split=(4.5, 1)), "data_split=.* must be a pair of values that each are an integer"),
    (SearchConfig, dict(data_split=(1, 1, 1)), "data_split=.* must be a pair"),
    (SearchConfig, dict(arch_betas=(0.5, 1.0)), "arch_betas=.* must be a pair"),
    (SearchConfig, dict(arch_grad_clip=float("inf")), "arch_grad_clip=inf must be a finite number > 0, or None"),
    (SearchConfig, dict(weight_lr="0.01"), "weight_lr='0.01' must be a finite number > 0"),
    (SearchConfig, dict(op_set="dints_4d"), "op_set='dints_4d' must be one of the op sets"),
    (SearchConfig, dict(arch_decoupled_weight_decay="yes"), "must be true or false"),
]


@pytest.mark.parametrize("cls,change,message", BAD_CONFIGS, ids=[f"{c.__name__}-{next(iter(d))}"
                                                                   for c, d, _ in BAD_CONFIGS])
def test_bad_config_fields_are_named_with_their_range(cls, change, message):
    cfg = replace(cls(), **change)  # creating it is fine: a bad variant must not break nnU-Net's trainer lookup
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_every_config_field_of_every_method_has_a_rule():
    for name in method_names():
        cls = get_method(name).config_class
        rules = cls.all_rules()
        missing = [f.name for f in fields(cls) if f.name not in rules]
        assert not missing, (cls.__name__, missing)
        cls().validate()  # the defaults are valid
        assert cls.from_dict(cls().to_dict()) == cls()  # and read back


def test_op_set_of_another_dimensionality_is_refused():
    with pytest.raises(ConfigError, match="op_set 'dints_2d' is 2-D but the configuration is 3-D"):
        replace(DiNTSSearchConfig(), op_set="dints_2d").validate(spatial_dims=3)


# ---------------------------------------------------------------------------------------------------- trainers
@pytest.fixture
def search_env(dints_search, tmp_path):
    """The finished search's full copy (preprocessed cases included) for real nnUNetv2_train runs."""
    root = str(tmp_path / "nnunet")
    return root, copy_work(dints_search[0], root)


# one check at the config's validation and one that needs the search network: every other message of either kind
# reaches the user the same way and is asserted in this process (test_bad_config_fields_are_named_..., above)
TRAINER_CASES = [
    ("nnUNetTrainerDiNTSSearchNaNBudgetTest", "memory_budget=nan must be a finite number > 0"),
    ("nnUNetTrainerDiNTSSearchUnreachableBudgetTest", r"attainable range is \(0, 0\.\d+\]"),
]


def test_a_bad_search_config_stops_nnunetv2_train_at_its_start_with_one_last_line(search_env):
    """Case 5 of the issue: NaN (or an unreachable budget) stops the search before its first step; the plans file
    is untouched and the last line of the output is the message."""
    root, env = search_env
    plans = os.path.join(root, "nnUNet_preprocessed", DATASET_NAME, "nnUNetPlans.json")
    before = snapshot(root)
    for trainer, message in TRAINER_CASES:
        p = run_cli(["nnUNetv2_train", "991", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env, check=False)
        last = (p.stdout + p.stderr).strip().splitlines()[-1]
        assert p.returncode != 0 and last.startswith(f"{trainer}: error: "), (trainer, last)
        assert re.search(message, last), (message, last)
        folder = os.path.join(root, "nnUNet_results", DATASET_NAME, f"{trainer}__nnUNetPlans__3d_fullres", "fold_0")
        assert not any(f.endswith(".pth") for f in os.listdir(folder)) if os.path.isdir(folder) else True
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before and after[os.path.relpath(plans, root)]


def test_resume_from_another_search_space_names_the_settings_that_differ(search_env):
    root, env = search_env
    other = "nnUNetTrainerDiNTSSearchDeeperTest"
    src = os.path.join(root, "nnUNet_results", DATASET_NAME, f"{SEARCH}__nnUNetPlans__3d_fullres", "fold_0")
    dst = os.path.join(root, "nnUNet_results", DATASET_NAME, f"{other}__nnUNetPlans__3d_fullres", "fold_0")
    os.makedirs(dst)
    shutil.copy2(os.path.join(src, "checkpoint_latest.pth" if os.path.isfile(
        os.path.join(src, "checkpoint_latest.pth")) else "checkpoint_final.pth"), os.path.join(dst,
                                                                                             "checkpoint_latest.pth"))
    before = snapshot(root)
    p = run_cli(["nnUNetv2_train", "991", "3d_fullres", "0", "-tr", other, "-device", "cpu", "--c"], env, check=False)
    last = (p.stdout + p.stderr).strip().splitlines()[-1]
    assert p.returncode != 0 and last.startswith(f"{other}: error: "), last
    assert "search_config.num_blocks: 3 in the checkpoint, 4 now" in last and "-tr nnUNetTrainerDiNTSSearchTest" in last
    after = snapshot(root)
    assert {k: after.get(k) for k in before} == before


# ---------------------------------------------------------------------------------------------------- plans writes
WRITER = textwrap.dedent("""
    import sys
    from nnunet_nas.nnunet.plans_io import register_configuration
    plans, tag, count, same = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "same"
    for k in range(count):
        name = "3d_fullres_nas" if same else f"3d_fullres_{tag}_{k}"
        arch = {"network_class_name": "nnunet_nas.X", "writer": tag, "k": k}
        used = register_configuration(plans, "3d_fullres", name, arch, auto_rename=True)
        print(used, tag, k, flush=True)
""")


def _small_plans(path):
    with open(path, "w") as f:
        json.dump({"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "configurations": {
            "3d_fullres": {"patch_size": [8, 8, 8], "batch_size": 2, "architecture": {"network_class_name": "x"}}}},
            f)


@pytest.mark.parametrize("same_name", [False, True], ids=["different-names", "same-requested-name"])
def test_concurrent_registrations_all_land_under_distinct_names(tmp_path, same_name):
    plans = str(tmp_path / "nnUNetPlans.json")
    _small_plans(plans)
    count = 12
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, plans, tag, str(count), "same" if same_name else "diff"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    used = [line.split() for out, _ in outs for line in out.splitlines()]
    assert len(used) == 2 * count and len({u[0] for u in used}) == 2 * count  # distinct names
    configs = json.load(open(plans))["configurations"]
    for name, tag, k in used:  # every registration present, holding what its writer registered
        assert configs[name]["architecture"] == {"network_class_name": "nnunet_nas.X", "writer": tag, "k": int(k)}


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from nnunet_nas import io
    from nnunet_nas.nnunet.plans_io import register_configuration
    io.before_replace = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
    register_configuration(sys.argv[1], "3d_fullres", "3d_fullres_killed", {"network_class_name": "nnunet_nas.X"})
""")


def test_a_registration_killed_between_write_and_rename_leaves_the_old_plans(tmp_path):
    from nnunet_nas.io import temporary_files
    from nnunet_nas.nnunet.plans_io import load_plans, register_configuration
    plans = str(tmp_path / "nnUNetPlans.json")
    _small_plans(plans)
    with open(plans, "rb") as f:
        before = f.read()
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, plans], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    with open(plans, "rb") as f:
        assert f.read() == before
    assert len(temporary_files(plans)) == 1  # the complete temporary file the kill left
    register_configuration(plans, "3d_fullres", "3d_fullres_next", {"network_class_name": "nnunet_nas.Y"})
    assert temporary_files(plans) == []  # the next write cleaned it up
    assert set(load_plans(plans)["configurations"]) == {"3d_fullres", "3d_fullres_next"}


def test_weights_only_loading_keeps_real_checkpoints_readable(ws):
    """nnU-Net's and our checkpoints hold numpy scalars, RNG states and torch.device: the allow-list covers them."""
    from nnunet_nas.nnunet.search_state import SEARCH_STATE_KEY, read_checkpoint
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        ckpt = read_checkpoint(os.path.join(ws.fold, name))
        assert ckpt[SEARCH_STATE_KEY]["method"] == "dints" and isinstance(ckpt["init_args"]["plans"], dict)

"""``nnunet-nas run``: the study's settings and their checks, its graph of nnU-Net commands, IAC's per-fold host,
and the whole study through nnU-Net's real commands on the tiny dataset (a run whose searches die, then the same
command again: nothing finished is redone, the searches resume, model selection and the test prediction follow,
the report's numbers are nnU-Net's)."""

import json
import os
import re

import numpy as np
import pytest

from helpers import DATASET_ID, DATASET_NAME, copy_work, nnunet_env, point_nnunet_at, run_cli, run_main
from nnunet_nas.errors import UserError
from nnunet_nas.genotypes.grid import GridGenotype
from nnunet_nas.nnunet.host import building_trainer_fold, host_for_fold, per_fold_host
from nnunet_nas.study.report import paired_difference
from nnunet_nas.study.runner import fingerprints
from nnunet_nas.study.settings import DatasetFacts, StudySettings, check_settings, check_trainers
from nnunet_nas.study.steps import build_steps, found_configuration

TRAINER = "nnUNetTrainerNASTest"
SEARCH = {"dints": "nnUNetTrainerDiNTSSearchTest", "iac": "nnUNetTrainerIACSearchTest"}
CONFIG = "2d"  # the study's e2e: 2-D trainings are the quickest on the CPU


# ---------------------------------------------------------------- settings and their checks
@pytest.fixture
def raw_only(tmp_path, monkeypatch):
    """nnU-Net's folders with one dataset in nnUNet_raw (dataset.json only: the checks read no image)."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(tmp_path / var)
        monkeypatch.setenv(var, str(tmp_path / var))
    folder = tmp_path / "nnUNet_raw" / "Dataset977_Two"
    os.makedirs(folder / "imagesTr")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {
        "background": 0, "a": 1}, "numTraining": 4, "file_ending": ".nii.gz"}))
    return tmp_path


def test_a_config_file_gives_the_settings_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: 7\nmethods: [dints, scnas]\nfolds: [0, 1]\nsearch-trainers:\n  dints: T\n")
    s = StudySettings.from_sources({"folds": [2, 3], "methods": None}, str(path))
    assert (s.dataset, s.methods, s.folds, s.search_trainers) == ("7", ["dints", "scnas"], [2, 3], {"dints": "T"})
    assert s.fold_of_search == 2
    (tmp_path / "bad.json").write_text('{"dataset": 7, "methods": ["dints"], "epochs": 3}')
    with pytest.raises(UserError, match="unknown setting.*epochs"):
        StudySettings.from_sources({}, str(tmp_path / "bad.json"))
    with pytest.raises(UserError, match="METHOD=TRAINER"):
        StudySettings.from_sources({"dataset": "7", "methods": ["dints"], "search_trainers": ["dints"]})


@pytest.mark.parametrize("change, message", [
    (dict(methods=["dints", "nasnet"]), r"unknown; the registered methods are"),
    (dict(dataset="976"), r"neither planned .* nor in nnUNet_raw"),
    (dict(folds=[0, 5]), r"has folds 0 to 4"),
    (dict(folds=[1, 2], search_fold=0), r"--search-fold 0 is not among --folds"),
    (dict(configurations=["3d_custom"]), r"not planned yet and nnUNetv2_plan_and_preprocess makes only"),
    (dict(search_trainers={"scnas": "X"}), r"--search-trainer names \['scnas'\]"),
    (dict(baseline_repeats=3), r"1 or 2"),
    (dict(random_controls=-1), r"--random-controls -1 must be a whole number of at least 0"),
    (dict(tag="a-b"), r"letters and digits only"),
    (dict(gpus=["0", "1", "2"], num_gpus_per_training=2), r"cannot be split into sets of"),
    (dict(executor="slurm", slurm_time=None), r"needs --slurm-time"),
])
def test_bad_input_is_one_error_before_any_work(raw_only, change, message):
    settings = dict(dataset="977", methods=["dints"], folds=[0, 1])
    settings.update(change)
    with pytest.raises(UserError, match=message):
        check_settings(StudySettings(**settings))
    assert os.listdir(raw_only / "nnUNet_preprocessed") == []


def test_a_test_folder_must_hold_every_channel_of_the_dataset(raw_only, tmp_path):
    test = tmp_path / "test"
    os.makedirs(test)
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"):
        (test / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"1 case\(s\) do not have the dataset's 2 channel.*b has \[0\]"):
        check_settings(StudySettings("977", ["dints"], folds=[0, 1], test=str(test)))
    (test / "b_0001.nii.gz").write_bytes(b"")
    assert check_settings(StudySettings("977", ["dints"], folds=[0, 1], test=str(test))).num_channels == 2


def test_trainers_are_found_by_nnunets_lookup_and_must_be_of_their_kind(raw_only, monkeypatch):
    from helpers import TEST_TRAINERS
    monkeypatch.setenv("nnUNet_extTrainer", TEST_TRAINERS)
    s = StudySettings("977", ["dints", "iac"], trainer=TRAINER, search_trainers={"dints": SEARCH["dints"]})
    assert check_trainers(s) == {"dints": SEARCH["dints"], "iac": "nnUNetTrainerIACSearch"}
    # our shims are searched beside the user's folders, as the steps will see them (the fixture folder does not
    # import nnUNetTrainerNAS_20x50) and the user's variable is left as it was
    assert check_trainers(StudySettings("977", ["dints"], trainer="nnUNetTrainerNAS_20x50")) == {
        "dints": "nnUNetTrainerDiNTSSearch"}
    assert os.environ["nnUNet_extTrainer"] == TEST_TRAINERS
    with pytest.raises(UserError, match="nnU-Net finds no such trainer"):
        check_trainers(StudySettings("977", ["dints"], trainer="nnUNetTrainerTypo"))
    with pytest.raises(UserError, match="is a search trainer"):
        check_trainers(StudySettings("977", ["dints"], trainer="nnUNetTrainerDiNTSSearch"))
    with pytest.raises(UserError, match="not a search trainer of dints"):
        check_trainers(StudySettings("977", ["dints"], search_trainers={"dints": "nnUNetTrainerSCNASSearch"}))


# ---------------------------------------------------------------- the graph
def _graph(search=SEARCH, planned=True, **change):
    facts = DatasetFacts("Dataset977_Two", planned, "/p/nnUNetPlans.json", 5, 2, ".nii.gz", {})
    s = StudySettings("977", ["dints", "iac"], folds=[0, 1, 2], search_fold=1, trainer=TRAINER, **change)
    return {st.name: st for st in build_steps(s, facts, search)}


def test_the_graph_orders_nnunets_commands_and_iac_builds_on_each_folds_own_baseline(monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/r")
    steps = _graph(baseline_repeats=2, device="cpu")
    assert list(steps)[0] == "config/3d_fullres_repeat2"
    search = steps["search/iac/3d_fullres"]
    assert search.command[:4] == ["nnUNetv2_train", "Dataset977_Two", "3d_fullres", "1"]
    assert search.deps == ["baseline/3d_fullres/fold_1"]  # the host of the search fold
    assert search.env == {"NNUNET_NAS_EXPORT_NAME": "3d_fullres_iac",
                          "NNUNET_NAS_HOST": f"/r/Dataset977_Two/{TRAINER}__nnUNetPlans__3d_fullres"}
    for f in (0, 1, 2):  # fine-tuning fold f waits for fold f's baseline, never only the search fold's
        assert steps[f"train/3d_fullres_iac/fold_{f}"].deps == ["search/iac/3d_fullres",
                                                                f"baseline/3d_fullres/fold_{f}"]
        assert steps[f"train/3d_fullres_dints/fold_{f}"].deps == ["search/dints/3d_fullres"]
    assert steps["baseline/3d_fullres_repeat2/fold_2"].deps == ["config/3d_fullres_repeat2"]
    select = steps["select"].command
    assert select[select.index("-c") + 1:select.index("-tr")] == ["3d_fullres", "3d_fullres_dints", "3d_fullres_iac"]
    assert "--npz" in steps["train/3d_fullres_dints/fold_0"].command
    assert found_configuration("2d", "dast", "v2") == "2d_dast_v2"
    # IAC's fair control: the planned network from fold f's own baseline, trained as the IAC configuration is
    assert steps["config/3d_fullres_iac_control"].command[-2:] == ["--trained-start", TRAINER]
    for f in (0, 1, 2):
        control = steps[f"control/3d_fullres_iac_control/fold_{f}"]
        assert control.deps == ["config/3d_fullres_iac_control", f"baseline/3d_fullres/fold_{f}"]
        assert control.command[2:6] == ["3d_fullres_iac_control", str(f), "-tr", TRAINER]


def test_random_controls_are_exported_from_each_search_and_trained_beside_its_found_configuration(monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/r")
    steps = _graph(random_controls=2)
    for method in ("dints", "iac"):
        search = steps[f"search/{method}/3d_fullres"]
        for seed in (0, 1):
            name = f"3d_fullres_{method}_random{seed}"
            config = steps[f"config/{name}"]
            assert config.command == ["nnunet-nas", "export", search.fold_folder, "--random", str(seed), "--name", name,
                                      "--overwrite"]
            assert config.deps == [search.name]
            for f in (0, 1, 2):  # IAC's random cells start from fold f's own baseline, as its found cells do
                host = [f"baseline/3d_fullres/fold_{f}"] if method == "iac" else []
                assert steps[f"control/{name}/fold_{f}"].deps == [f"config/{name}"] + host
    select = steps["select"].command  # controls are there to compare, not candidates of model selection
    assert select[select.index("-c") + 1:select.index("-tr")] == ["3d_fullres", "3d_fullres_dints", "3d_fullres_iac"]
    assert not any("random" in n for n in _graph())  # none by default


def test_fingerprints_follow_what_a_step_computes_and_what_it_builds_on(monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/r")
    base = fingerprints(list(_graph().values()))
    assert base == fingerprints(list(_graph(device="cpu", num_gpus_per_training=2).values()))  # where, not what
    # a study that planned its dataset: on the rerun the dataset is planned and the plan step gone, nothing else
    first = fingerprints(list(_graph(planned=False).values()))
    assert first.pop("plan") and first == base
    other = fingerprints(list(_graph(dict(SEARCH, dints="nnUNetTrainerDiNTSSearch")).values()))
    changed = {n for n in base if base[n] != other[n]}
    # another search trainer for dints: its search, the trainings of what it finds and model selection
    assert changed == {"search/dints/3d_fullres", "select"} | {f"train/3d_fullres_dints/fold_{f}" for f in (0, 1, 2)}


# ---------------------------------------------------------------- IAC's per-fold host
def test_a_configuration_names_its_host_per_fold_and_the_building_trainer_resolves_it(tmp_path):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    path = "/r/D/T__P__C/fold_3/checkpoint_final.pth"
    assert per_fold_host(path, 3) == "/r/D/T__P__C/fold_{fold}/checkpoint_final.pth"
    assert host_for_fold(per_fold_host(path, 3), 0) == "/r/D/T__P__C/fold_0/checkpoint_final.pth"
    assert per_fold_host("/elsewhere/model.pth", 3) == "/elsewhere/model.pth"  # a file outside nnU-Net's layout

    class Builder(nnUNetTrainer):
        def initialize(self):
            return building_trainer_fold()
    trainer = object.__new__(Builder)
    trainer.fold = 4
    assert trainer.initialize() == 4 and building_trainer_fold() is None


def test_paired_difference_is_the_mean_difference_with_an_interval_that_holds_it():
    a = {"x": 0.9, "y": 0.8, "z": 0.7, "w": float("nan")}
    b = {"x": 0.8, "y": 0.8, "z": 0.5, "v": 0.1}
    d = paired_difference(a, b)
    assert d["cases"] == 3 and d["mean"] == pytest.approx(0.1)
    assert d["low"] <= 0.1 <= d["high"] and d["low"] >= 0.0 - 1e-12 and d["high"] <= 0.2 + 1e-12


def test_the_report_sets_each_found_configuration_against_its_controls_case_by_case():
    from nnunet_nas.study.report import comparison_table
    cases = {f"c{i}": 0.5 + 0.01 * i for i in range(30)}
    shifted = {"2d_dints": 0.03, "2d_dints_random0": 0.01, "2d_dints_random1": 0.0, "2d_iac": 0.02,
               "2d_iac_control": 0.0, "2d_iac_random0": 0.02}
    scores = {"2d": cases, **{c: {k: v + d for k, v in cases.items()} for c, d in shifted.items()}}
    results = {c: {"kind": "baseline" if c == "2d" else "train", "folds": {0: {"cases": cases}}} for c in scores}
    lines = "\n".join(comparison_table({"search_fold": 0}, results, scores))
    random = "a random architecture of its search's space at the same memory"
    assert f"| 2d_dints against 2d_dints_random0 ({random}) | 30 | +0.0200 [+0.0200, +0.0200] |" in lines
    assert f"| 2d_dints against 2d_dints_random1 ({random}) | 30 | +0.0300 [+0.0300, +0.0300] |" in lines
    assert f"| 2d_iac against 2d_iac_random0 ({random}) | 30 | +0.0000" in lines
    assert "| 2d_iac against 2d_iac_control (the same start and schedule, no cells) | 30 | +0.0200" in lines
    assert "2d_dints_random0 against" not in lines and "2d_dints against 2d_iac" not in lines


def test_the_report_says_when_the_chosen_configuration_is_not_above_its_controls(tmp_path):
    # model selection never sees the controls: a chosen configuration no better than one of them gets a line
    from nnunet_nas.study.report import noise_band, selection_lines
    cases = {f"c{i}": 0.5 + 0.01 * i for i in range(30)}
    shifted = {"2d_repeat2": 0.01 * (np.arange(30) % 2 * 2 - 1), "2d_dints": 0.03, "2d_dints_random0": 0.01,
               "2d_iac": 0.02, "2d_iac_control": 0.019, "2d_iac_random0": 0.0}
    scores = {"2d": cases, **{c: {k: v + d for (k, v), d in zip(cases.items(), np.broadcast_to(s, 30))}
                              for c, s in shifted.items()}}
    results = {c: {"kind": "baseline" if c in ("2d", "2d_repeat2") else "train", "folds": {}} for c in scores}
    os.makedirs(tmp_path / "selection")

    def chosen(*configurations):
        (tmp_path / "selection" / "inference_information.json").write_text(json.dumps({"best_model_or_ensemble": {
            "selected_model_or_models": [{"configuration": c} for c in configurations],
            "result_on_crossval_pre_pp": 0.8, "result_on_crossval_post_pp": 0.8}, "all_results": {"x": 0.8}}))
        return "\n".join(selection_lines(str(tmp_path), results, scores))
    lines = chosen("2d_iac", "2d_dints")
    band = noise_band(results, scores)  # the baseline runs' spread, about 0.0036 here
    assert 0.001 < band < 0.01
    assert "**2d_iac is not above 2d_iac_control** (the same start and schedule, no cells) beyond the noise: " \
           f"+0.0010 [+0.0010, +0.0010] case by case, noise band +-{band:.4f}" in lines
    assert "2d_iac_random0**" not in lines and "**2d_dints is not above" not in lines  # +0.02 above each
    assert "not above" not in chosen("2d_dints")


# ---------------------------------------------------------------- the whole study, real commands
def _study(env, run_dir, *extra, crash=False):
    env = dict(env)
    if crash:
        env["NAS_TEST_CRASH_AFTER_EPOCH"] = "0"  # the test search trainers die after their first epoch
    return run_cli(["nnunet-nas", "run", str(DATASET_ID), "-c", CONFIG, "--methods", "dints", "iac",
                    "--folds", "0", "1", "--trainer", TRAINER, "--search-trainer",
                    *[f"{m}={t}" for m, t in SEARCH.items()], "-device", "cpu", "--parallel", "2", "-np", "1",
                    "--run-dir", run_dir, *extra], env, timeout=1200, check=not crash)


@pytest.mark.e2e
def test_a_study_that_died_is_finished_by_the_same_command(tmp_path, monkeypatch, capsys):
    """The whole study through nnU-Net's real commands (``nnunet-nas run`` in a subprocess); the dry run, the report
    and the refused rerun, which launch no nnU-Net command, in this process."""
    from nnunet_nas.demo import make_demo_dataset
    env = nnunet_env(str(tmp_path / "nnunet"))  # the raw dataset only: the study plans it
    make_demo_dataset(env["nnUNet_raw"], DATASET_ID, num_cases=6, shape=(32, 32, 32), seed=1)  # 5 folds, 1-2 each
    run_dir = str(tmp_path / "study")
    test = tmp_path / "test"
    os.makedirs(test)
    image = sorted(os.listdir(os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr")))[0]
    os.symlink(os.path.join(env["nnUNet_raw"], DATASET_NAME, "imagesTr", image), test / image)

    point_nnunet_at(monkeypatch, env)
    rc, dry, _ = run_main(capsys, ["run", str(DATASET_ID), "--methods", "dints", "iac", "--folds", "0", "1",
                                   "--trainer", TRAINER, "--search-trainer", *[f"{m}={t}" for m, t in SEARCH.items()],
                                   "-device", "cpu", "--run-dir", run_dir, "--dry-run"])
    assert rc == 0
    assert re.search(r"\[ 4\] search/dints/3d_fullres  \(to run; after: plan\)\n +NNUNET_NAS_EXPORT_NAME="
                     r"3d_fullres_dints nnUNetv2_train Dataset991_NASDemo 3d_fullres 0 -tr " + SEARCH["dints"], dry)
    assert "10 trainings (2 baseline, 2 searches, 4 of found configurations, 2 controls)" in dry
    assert not os.path.exists(run_dir)

    first = _study(env, run_dir, crash=True)  # both searches die; the baselines finish, selection runs on them
    assert first.returncode == 3, first.stderr[-3000:]  # the study is incomplete
    ledger = json.load(open(os.path.join(run_dir, "ledger.json")))
    assert ledger["plan"]["status"] == "done" and ledger["plan"]["command"][:5] == [
        "nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIG]
    assert {n: r["status"] for n, r in ledger.items() if n.startswith("search")} == {
        f"search/dints/{CONFIG}": "failed", f"search/iac/{CONFIG}": "failed"}
    assert ledger[f"train/{CONFIG}_dints/fold_1"]["status"] == "blocked"
    assert ledger["select"]["status"] == "done" and f"FAILED search/dints/{CONFIG}" in first.stdout
    baseline_ended = ledger[f"baseline/{CONFIG}/fold_0"]["ended"]

    second = _study(env, run_dir, "--test", str(test))
    ledger = json.load(open(os.path.join(run_dir, "ledger.json")))
    assert ledger[f"baseline/{CONFIG}/fold_0"]["ended"] == baseline_ended  # not redone
    assert ledger[f"search/dints/{CONFIG}"]["command"][-1] == "--c"  # resumed from its checkpoint
    assert ledger[f"search/dints/{CONFIG}"]["attempts"] == 2 and ledger[f"search/dints/{CONFIG}"]["earlier_seconds"] > 0
    assert "every step finished" in second.stdout
    # IAC's fine-tune of fold 1 started from fold 1's own baseline, not from the search fold's
    log = open(ledger[f"train/{CONFIG}_iac/fold_1"]["log"]).read()
    assert re.search(rf"host's weights loaded from \S+{TRAINER}__nnUNetPlans__{CONFIG}/fold_1/checkpoint_final", log)
    # and its fair control, the planned network fine-tuned from the same model as long, did too, every weight
    log = open(ledger[f"control/{CONFIG}_iac_control/fold_1"]["log"]).read()
    assert re.search(rf"every weight loaded from \S+{TRAINER}__nnUNetPlans__{CONFIG}/fold_1/checkpoint_final", log)
    select = ledger["select"]["command"]
    assert select[select.index("-c") + 1:select.index("-tr")] == [CONFIG, f"{CONFIG}_dints", f"{CONFIG}_iac"]
    final = os.path.join(run_dir, "test_predictions", "final")
    assert os.listdir(final) and any(f.endswith(".nii.gz") for f in os.listdir(final))

    # the report's numbers are nnU-Net's own
    report = open(os.path.join(run_dir, "report.md")).read()
    results = env["nnUNet_results"]
    for config in (CONFIG, f"{CONFIG}_dints", f"{CONFIG}_iac"):
        means = [json.load(open(os.path.join(results, DATASET_NAME, f"{TRAINER}__nnUNetPlans__{config}",
                                             f"fold_{f}", "validation", "summary.json")))["foreground_mean"]["Dice"]
                 for f in (0, 1)]
        assert f"| {config} | 0,1 | " in report and f"| {np.mean(means):.4f} | {np.std(means):.4f} |" in report
    assert f"| {CONFIG}_iac against {CONFIG}_iac_control (the same start and schedule, no cells) | " in report
    assert re.search(rf"\| search/dints/{CONFIG} \| done \| [0-9.]+ s \(2 attempts\) \|", report)
    # beside the Dice, how far each search separated (the tiny searches did not): the genotype's own figure
    genotype = json.load(open(os.path.join(results, DATASET_NAME, f"{SEARCH['dints']}__nnUNetPlans__{CONFIG}",
                                           "fold_0", "dints_genotype.json")))
    separation = genotype["provenance"]["convergence"]["separation"]
    assert re.search(rf"\| {CONFIG}_dints \| 0,1 \|.*\| \*\*{separation:.2f}.*close to a random draw\*\* \|", report)
    info = json.load(open(os.path.join(run_dir, "selection", "inference_information.json")))
    assert f"{info['best_model_or_ensemble']['result_on_crossval_pre_pp']:.4f}" in report
    assert os.path.getsize(os.path.join(run_dir, "figures", "dice_per_case.png")) > 1000
    assert os.path.isfile(os.path.join(run_dir, "figures", f"dints_{CONFIG}_architecture.png"))
    os.remove(os.path.join(run_dir, "report.md"))
    assert run_main(capsys, ["report", run_dir])[0] == 0
    assert open(os.path.join(run_dir, "report.md")).read() == report

    # a found configuration is an ordinary nnU-Net model: 2-D here, shipped as nnU-Net's zip, predicting where installed
    g = GridGenotype.load(os.path.join(results, DATASET_NAME, f"{SEARCH['dints']}__nnUNetPlans__{CONFIG}", "fold_0",
                                       "dints_genotype.json"))
    assert g.op_set == "dints_2d" and g.spatial_dims == 2
    plans = json.load(open(os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")))
    assert plans["configurations"][f"{CONFIG}_dints"]["inherits_from"] == CONFIG
    zipped = str(tmp_path / "found_model.zip")
    run_cli(["nnUNetv2_export_model_to_zip", "-d", str(DATASET_ID), "-o", zipped, "-c", f"{CONFIG}_dints", "-tr",
             TRAINER, "-f", "0", "1"], env)
    elsewhere = dict(env, nnUNet_results=str(tmp_path / "empty_results"))
    os.makedirs(elsewhere["nnUNet_results"])
    run_cli(["nnUNetv2_install_pretrained_model_from_zip", zipped], elsewhere)
    out = tmp_path / "installed_prediction"
    run_cli(["nnUNetv2_predict", "-i", str(test), "-o", str(out), "-d", str(DATASET_ID), "-c", f"{CONFIG}_dints",
             "-f", "0", "-tr", TRAINER, "-device", "cpu", "-npp", "0", "-nps", "0"], elsewhere)
    assert [f for f in os.listdir(out) if f.endswith(".nii.gz")] == [image.replace("_0000", "")]

    # a rerun with another trainer for the baselines and retrainings names the steps it would redo
    rc, _, err = run_main(capsys, ["run", str(DATASET_ID), "-c", CONFIG, "--methods", "dints", "iac", "--folds", "0",
                                   "1", "--trainer", "nnUNetTrainerNASDemo", "--search-trainer",
                                   *[f"{m}={t}" for m, t in SEARCH.items()], "-device", "cpu", "--run-dir", run_dir])
    assert rc == 2 and "--redo-changed" in err and f"baseline/{CONFIG}/fold_0" in err


def test_slurm_without_submitit_is_one_error_naming_the_extra(raw_only, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    with pytest.raises(UserError, match=r'pip install "nnunet_nas\[slurm\]"'):
        check_settings(StudySettings("977", ["dints"], folds=[0, 1], executor="slurm", slurm_time=60))


def test_slurm_jobs_are_followed_again_after_the_run_that_submitted_them_died(planned_dataset, tmp_path):
    """submitit's SLURM path (sbatch, sacct, srun) with stand-in scripts that run the jobs on this machine: the run
    is killed while its first jobs run; the same command again follows those jobs instead of submitting them
    again, and finishes the study."""
    import signal
    import subprocess
    import time
    from helpers import HERE
    env = copy_work(planned_dataset[0], str(tmp_path / "nnunet"))
    state = tmp_path / "slurm_state"
    env.update(PATH=os.pathsep.join([os.path.join(HERE, "fixtures", "slurm"), env["PATH"]]),
               FAKE_SLURM_STATE=str(state), NNUNET_NAS_SLURM_POLL_S="1")
    run_dir = str(tmp_path / "study")
    cmd = ["nnunet-nas", "run", str(DATASET_ID), "-c", CONFIG, "--methods", "dints", "--folds", "0", "--trainer",
           TRAINER, "--search-trainer", f"dints={SEARCH['dints']}", "-device", "cpu", "--run-dir", run_dir,
           "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "60"]
    controller = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger_path = os.path.join(run_dir, "ledger.json")
    deadline = time.time() + 300
    while time.time() < deadline:
        ledger = json.load(open(ledger_path)) if os.path.isfile(ledger_path) else {}
        if sum(1 for r in ledger.values() if r.get("job_id")) == 2:  # the baseline and the search are submitted
            break
        time.sleep(0.5)
    controller.send_signal(signal.SIGKILL)
    controller.wait()
    jobs = {n: r["job_id"] for n, r in ledger.items() if r.get("job_id")}
    assert set(jobs) == {f"baseline/{CONFIG}/fold_0", f"search/dints/{CONFIG}"}
    script = open(os.path.join(run_dir, "slurm", f"{jobs[f'search/dints/{CONFIG}']}_submission.sh")).read()
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=60" in script

    again = run_cli(cmd, env)
    assert again.stdout.count("still running from an earlier run") + again.stdout.count("done in") >= 2
    ledger = json.load(open(ledger_path))
    assert {n: ledger[n]["job_id"] for n in jobs} == jobs  # followed, not submitted again
    assert len(open(state / "submissions").read().splitlines()) == 4  # baseline, search, training, selection
    assert all(r["status"] == "done" for r in ledger.values()) and "every step finished" in again.stdout


def test_submitit_local_jobs_run_steps_in_order_and_a_live_one_is_not_started_twice(tmp_path):
    """submitit's local executor behind the same scheduler as SLURM: each step a submitit job (pickled call, job
    id in the ledger), dependents after what they need, a failed step blocking only its dependents, one job at a
    time; a rerun that finds a step's job still alive (it cannot follow a local job) stops with one error."""
    import sys
    from nnunet_nas.study.ledger import Ledger
    from nnunet_nas.study.slurm import SubmititLocalExecutor
    from nnunet_nas.study.steps import Step

    def write(path, fail=False):
        code = f"open({str(path)!r}, 'w').write(str(__import__('os').getpid()))" + ("; raise SystemExit(4)" * fail)
        return [sys.executable, "-c", code]
    a, b, bad = tmp_path / "a", tmp_path / "b", tmp_path / "bad"
    steps = [Step("first", "config", write(a)), Step("second", "config", write(b), deps=["first"]),
             Step("broken", "config", write(bad, fail=True)), Step("after_broken", "config", write(bad), ["broken"])]
    run_dir = str(tmp_path / "run")
    ledger = Ledger(str(tmp_path))
    ex = SubmititLocalExecutor(run_dir, ledger, {"PATH": os.environ["PATH"]}, {}, 0, log=lambda line: None)
    ex.poll_s = 0.2
    status = ex.run(steps, {st.name: st.name for st in steps}, {st.name: st.command for st in steps})
    assert status == {"first": "done", "second": "done", "broken": "failed", "after_broken": "blocked"}
    assert a.read_text() != str(os.getpid()) and a.read_text() != b.read_text()  # each step its own job process
    records = ledger.records
    assert all(records[n]["job_id"] for n in ("first", "second", "broken")) and records["broken"]["returncode"] == 4
    spans = sorted((records[n]["started"], records[n]["ended"]) for n in ("first", "second", "broken"))
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # --parallel 1: never side by side
    assert os.path.isfile(os.path.join(run_dir, "logs", "second.log"))
    assert os.path.isdir(os.path.join(run_dir, "slurm"))  # submitit's own job files

    ledger.update("first", status="running", job_id=str(os.getpid()))  # a job id whose process is alive
    with pytest.raises(UserError, match="still runs as submitit local job"):
        ex.run(steps[:1], {"first": "first"}, {"first": steps[0].command})


def test_a_training_killed_while_saving_resumes_from_its_last_whole_checkpoint(tmp_path):
    """nnU-Net's trainer writes its checkpoints in place: a kill mid-save leaves a truncated file that --c would load
    and crash on at every restart. Before the training starts again such files are moved aside, never deleted; it
    resumes from the next whole one, or starts anew without --c when none is left."""
    import sys
    import torch
    from nnunet_nas.study.executor import LocalExecutor
    from nnunet_nas.study.ledger import Ledger
    from nnunet_nas.study.resume import command_to_run
    from nnunet_nas.study.steps import Step

    fold = tmp_path / "fold_0"
    fold.mkdir()
    torch.save({"current_epoch": 7}, fold / "checkpoint_latest.pth")
    whole = (fold / "checkpoint_latest.pth").read_bytes()
    (fold / "checkpoint_final.pth").write_bytes(whole[:len(whole) // 2])  # killed while saving the final one
    (fold / "checkpoint_best.pth").write_bytes(b"")
    seen = tmp_path / "seen.txt"
    listing = [sys.executable, "-c", f"import os; open({str(seen)!r}, 'w').write(' '.join(sorted(os.listdir("
               f"{str(fold)!r}))))"]
    step = Step("baseline/2d/fold_0", "baseline", listing, fold_folder=str(fold))
    assert command_to_run(step)[-1] == "--c"
    lines = []
    ex = LocalExecutor(str(tmp_path / "run"), Ledger(str(tmp_path)), {"PATH": os.environ["PATH"]}, log=lines.append)
    assert ex.run([step], {step.name: "x"}, {step.name: listing}) == {step.name: "done"}
    names = seen.read_text().split()
    assert "checkpoint_latest.pth" in names and "checkpoint_final.pth" not in names and "checkpoint_best.pth" \
        not in names
    assert sorted(n.split("-")[0] for n in names if ".unreadable-" in n) == ["checkpoint_best.pth.unreadable",
                                                                           "checkpoint_final.pth.unreadable"]
    assert torch.load(fold / "checkpoint_latest.pth")["current_epoch"] == 7  # the whole one untouched
    assert sum("is cut short" in line for line in lines) == 2

    os.remove(fold / "checkpoint_latest.pth")
    (fold / "checkpoint_latest.pth").write_bytes(whole[:100])
    assert command_to_run(step) == listing  # nothing whole is left: a new training, not a crash on --c


def test_time_left_comes_from_finished_steps_of_the_same_kind():
    from nnunet_nas.study.executor import launched, time_left
    from nnunet_nas.study.steps import Step
    batch = [Step("baseline/c/fold_0", "baseline", ["nnUNetv2_train"]), Step("train/x/fold_0", "train", ["x"]),
             Step("train/x/fold_1", "train", ["x"]), Step("select", "select", ["nnUNetv2_find_best_configuration"])]
    assert time_left(batch, {}) == "time left unknown until a training finishes"
    assert time_left(batch, {"baseline/c/fold_0": 100.0}) == "time left unknown"  # nothing like select ran yet
    assert time_left(batch[:3], {"baseline/c/fold_0": 100.0}) == "about 0:03:20 left"
    # trainings start through the GPU-peak wrapper (the same nnU-Net command in one process); the rest as they are
    wrapped = launched("/run", batch[0], ["nnUNetv2_train", "D", "2d", "0"])
    assert wrapped[1:3] == ["-m", "nnunet_nas.study.gpu_peak"] and wrapped[-4:] == ["nnUNetv2_train", "D", "2d", "0"]
    assert launched("/run", batch[3], batch[3].command) == batch[3].command


def test_a_steps_wall_clock_counts_every_attempt_of_the_same_computation(tmp_path):
    from nnunet_nas.study.ledger import DONE, FAILED, Ledger, wall_seconds
    from nnunet_nas.study.report import step_table
    ledger = Ledger(str(tmp_path))
    ledger.start_attempt("search/dints/2d", "f1", log=str(tmp_path / "search.log"))
    ledger.update("search/dints/2d", status=FAILED, seconds=100.0)  # e.g. cut off by its time limit
    ledger.start_attempt("search/dints/2d", "f1", log=str(tmp_path / "search.log"))
    # this attempt dies with the run: no end on record, counted up to the last write to its log
    started = ledger.get("search/dints/2d")["started"]
    (tmp_path / "search.log").write_text("epoch 1\n")
    os.utime(tmp_path / "search.log", (started + 30, started + 30))
    ledger.start_attempt("search/dints/2d", "f1", log=str(tmp_path / "search.log"))
    ledger.update("search/dints/2d", status=DONE, seconds=50.0)
    record = ledger.get("search/dints/2d")
    assert record["attempts"] == 3 and record["earlier_seconds"] == pytest.approx(130.0, abs=0.2)
    assert wall_seconds(record) == pytest.approx(180.0, abs=0.2)
    table = "\n".join(step_table({"steps": [{"name": "search/dints/2d", "kind": "search"}]}, ledger.records))
    assert "| search/dints/2d | done | 180 s (3 attempts) |" in table
    # redone (done before, or its settings changed): a new computation, counted from zero
    ledger.start_attempt("search/dints/2d", "f1")
    assert ledger.get("search/dints/2d")["attempts"] == 1 and wall_seconds(ledger.get("search/dints/2d")) == 0
    ledger.update("search/dints/2d", status=FAILED, seconds=10.0)
    ledger.start_attempt("search/dints/2d", "f2")
    assert ledger.get("search/dints/2d")["earlier_seconds"] == 0


def test_one_run_at_a_time_per_run_folder(tmp_path):
    from nnunet_nas.study.runner import run_folder_lock
    with run_folder_lock(str(tmp_path)):
        with pytest.raises(UserError, match="another nnunet-nas run is using"):
            with run_folder_lock(str(tmp_path)):
                pass
    with run_folder_lock(str(tmp_path)):  # released
        pass


def test_add_config_copies_a_configuration_for_a_second_run_or_another_batch(fresh_dataset, monkeypatch, capsys):
    """``nnunet-nas add-config``: what ``--baseline-repeats 2`` trains under, and the CPU protocol's ``2d_bs32``."""
    root, env = fresh_dataset
    point_nnunet_at(monkeypatch, env)
    assert run_main(capsys, ["add-config", str(DATASET_ID), "2d", "2d_repeat2"])[0] == 0
    assert run_main(capsys, ["add-config", str(DATASET_ID), "2d", "2d_bs4", "--batch-size", "4"])[0] == 0
    path = os.path.join(env["nnUNet_preprocessed"], DATASET_NAME, "nnUNetPlans.json")
    plans = json.load(open(path))["configurations"]
    repeat = plans["2d_repeat2"]
    assert repeat["inherits_from"] == "2d" and repeat["architecture"] == plans["2d"]["architecture"]
    assert "batch_size" not in repeat
    assert plans["2d_bs4"]["batch_size"] == 4
    rc, _, err = run_main(capsys, ["add-config", str(DATASET_ID), "2d", "2d_bs4", "--batch-size", "8"])
    assert rc == 2 and "2d_bs4" in err  # never replaces a configuration silently


def test_a_trained_start_is_the_planned_network_with_every_weight_of_its_folds_model(tmp_path):
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from helpers import tiny_planned_block
    from nnunet_nas.errors import MissingFileError
    from nnunet_nas.networks.trained_start import trained_start_block
    block = tiny_planned_block(2)
    planned = get_network_from_plans(block["network_class_name"], block["arch_kwargs"], block["_kw_requires_import"],
                                     1, 3, allow_init=True, deep_supervision=True)
    os.makedirs(tmp_path / "fold_1")
    torch.save({"network_weights": {f"module.{k}": v + 1 for k, v in planned.state_dict().items()}},
               tmp_path / "fold_1" / "checkpoint_final.pth")
    start = trained_start_block(block, str(tmp_path / "fold_{fold}" / "checkpoint_final.pth"))

    def build():
        return get_network_from_plans(start["network_class_name"], start["arch_kwargs"], [], 1, 3, allow_init=True,
                                      deep_supervision=True)

    class Trainer(nnUNetTrainer):
        def initialize(self):
            return build()
    trainer = object.__new__(Trainer)
    trainer.fold = 1
    net = trainer.initialize()
    assert type(net) is type(planned)  # an ordinary nnU-Net network: its checkpoints are nnU-Net's
    for k, v in planned.state_dict().items():  # every weight, the segmentation heads included
        assert torch.equal(net.state_dict()[k], v + 1), k
    trainer.fold = 0
    with pytest.raises(MissingFileError, match="train that fold of the model first"):
        trainer.initialize()
    assert not torch.equal(build().state_dict()["decoder.seg_layers.0.weight"],  # the predictor: nothing loaded
                           planned.state_dict()["decoder.seg_layers.0.weight"] + 1)

"""The uci, omniglot and celeba presets end to end on small data, the CelebA trunks, and the
Omniglot zero-padding shortcut at the paper's shape (Sec. 4.3, A.3)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from softorder.data.fake import write_fake_celeba, write_fake_omniglot, write_fake_uci
from softorder.experiments import get_experiment
from softorder.experiments.runner import run_experiment
from softorder.layers import ZeroPadChannels
from softorder.model import build_model
from softorder.tasks import TaskSpec

PRESETS = ("uci", "omniglot", "celeba")


def result_of(out, key_dir):
    return json.loads((out / "trials" / key_dir / "result.json").read_text())


def mtimes(out):
    return {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("result.json")}


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_config_resolves_and_rejects_unknown_keys(name):
    exp = get_experiment(name)
    full, quick = exp.resolve_config(False), exp.resolve_config(True)
    assert full["quick"] is False and quick["quick"] is True
    assert set(full) == set(quick)
    assert exp.trials({**full, "experiment": name}) and exp.trials({**quick, "experiment": name})
    some_key = sorted(k for k in full if k != "quick")[0]
    with pytest.raises(ValueError, match="unknown option"):
        exp.resolve_config(True, {some_key + "x": 1})
    with pytest.raises(ValueError, match="unknown option 'trails'; did you mean 'trials'"):
        exp.resolve_config(False, {"trails": 3})


def test_paper_settings_are_the_defaults():
    uci = get_experiment("uci").resolve_config(False)
    assert (uci["width"], uci["depth"], uci["dropouts"][0], len(uci["tasks"])) == (32, 4, 0.8, 10)
    assert uci["methods"] == ["single", "parallel", "permuted", "soft"]
    om = get_experiment("omniglot").resolve_config(False)
    assert (om["width"], om["depth"], om["dropout"], om["iterations"], om["batch_size"], om["downsample"]) == (53, 4, 0.5, 5000, 1, 1)
    assert max(om["num_tasks"]) == 50 and om["test_fractions"] == [0.1, 0.2]
    ce = get_experiment("celeba").resolve_config(False)
    assert (ce["trunk"], ce["image_size"], ce["width"], ce["depth"], ce["dropout"], ce["batch_size"]) == ("resnet50", 224, 256, 4, 0.5, 32)
    assert (ce["second_optimizer"], ce["second_lr"]) == ("rmsprop", 1e-5)
    assert ce["methods"] == ["parallel", "soft", "soft+landmarks", "soft+identity"]
    assert get_experiment("celeba").resolve_config(True)["trunk"] == "small-cnn"


def test_bad_grids_are_refused():
    om = get_experiment("omniglot")
    with pytest.raises(ValueError, match="between 1 and 50"):
        om.trials({**om.resolve_config(True, {"num_tasks": [0, 3]}), "experiment": "omniglot"})
    with pytest.raises(ValueError, match="unknown method"):
        om.trials({**om.resolve_config(True, {"methods": ["sideways"]}), "experiment": "omniglot"})
    ce = get_experiment("celeba")
    with pytest.raises(ValueError, match="identity layer belongs to soft"):
        ce.trials({**ce.resolve_config(True, {"methods": ["parallel+identity"]}), "experiment": "celeba"})
    with pytest.raises(ValueError, match="'landmarks' and 'identity'"):
        ce.trials({**ce.resolve_config(True, {"methods": ["soft+extra"]}), "experiment": "celeba"})
    with pytest.raises(ValueError, match="unknown trunk"):
        ce.trials({**ce.resolve_config(True, {"trunk": "vgg"}), "experiment": "celeba"})


# --- end to end ---------------------------------------------------------------------------------


def test_uci_end_to_end_and_resume(tmp_path):
    data = tmp_path / "data"
    write_fake_uci(data, rows=30)
    out = tmp_path / "run"
    overrides = dict(tasks=["iris", "australian", "wine"], trials=2, iterations=20, eval_every=10, width=8, verify_data=False)
    summary = run_experiment(get_experiment("uci"), out, quick=True, overrides=overrides, data_dir=data)
    assert summary["trials_finished"] == summary["trials_total"] == 2 * 4 * 2  # dropouts x methods x trials
    assert json.loads((out / "config.json").read_text())["iterations"] == 20
    block = summary["by_dropout"]["0.8"]
    assert set(block["final_mean_error"]) == {"single", "parallel", "permuted", "soft"}
    assert block["final_mean_error"]["soft"]["n"] == 2
    assert block["curves"]["soft"]["iterations"] == [10, 20]
    assert set(block["per_task_final"]["parallel"]) == {"iris", "australian", "wine"}
    assert set(summary["by_dropout"]) == {"0.8", "0.2"}
    for png in ("uci_curves.png", "uci_layer_usage.png", "uci_usage_distribution.png"):
        assert (out / png).stat().st_size > 0
    assert "| iris |" in (out / "results_table.md").read_text()
    result = result_of(out, "dropout=0.8_soft_trial=1")["result"]
    assert 0.0 <= result["final_mean_val_error"] <= 1.0
    assert len(result["mixing"]) == 3 and abs(sum(row[0] for row in result["mixing"][0]) - 1.0) < 1e-5

    before = mtimes(out)
    again = run_experiment(get_experiment("uci"), out, quick=True, overrides=overrides, data_dir=data)
    assert mtimes(out) == before  # nothing ran again
    assert again["by_dropout"]["0.8"]["final_mean_error"] == block["final_mean_error"]


def test_uci_resumes_an_interrupted_trial(tmp_path):
    """A trial stopped part-way continues from its checkpoint and ends as an uninterrupted one."""
    from softorder.experiments.runner import Trial, run_one_trial

    exp = get_experiment("uci")
    config = {**exp.resolve_config(True, dict(tasks=["iris", "wine"], iterations=20, eval_every=10, width=8)), "experiment": "uci"}
    trial = Trial("dropout=0.8/soft/trial=0", {"dropout": 0.8, "method": "soft", "trial": 0})
    whole = run_one_trial(exp, config, trial, tmp_path / "a", None)
    part = run_one_trial(exp, {**config, "iterations": 10}, trial, tmp_path / "b", None)
    assert part["iterations"] == [10]
    resumed = run_one_trial(exp, config, trial, tmp_path / "b", None)
    assert resumed["iterations"] == [10, 20]
    assert resumed["mean_val_error"] == whole["mean_val_error"]
    assert resumed["mixing"] == whole["mixing"]


def test_omniglot_end_to_end_and_resume(tmp_path):
    data = tmp_path / "data"
    write_fake_omniglot(data)  # Gujarati, Arcadian | Sylheti, Tibetan: the paper's first four
    out = tmp_path / "run"
    overrides = dict(num_tasks=[1, 4], test_fractions=[0.1, 0.2], iterations=6, eval_every=3, width=8, downsample=5, verify_data=False)
    summary = run_experiment(get_experiment("omniglot"), out, quick=True, overrides=overrides, data_dir=data)
    assert summary["trials_finished"] == summary["trials_total"] == 3 * 4  # (1, 0.1), (4, 0.1), (4, 0.2)
    assert summary["image_side"] == 21
    assert set(summary["error_by_cell"]) == {"tasks=1/test=0.1", "tasks=4/test=0.1", "tasks=4/test=0.2"}
    assert set(summary["all_tasks_table"]) == {"0.1", "0.2"}
    assert summary["all_tasks_table"]["0.2"]["soft"]["n"] == 1
    for png in ("omniglot_by_tasks.png", "omniglot_curves.png", "omniglot_usage_distribution.png", "omniglot_table.png"):
        assert (out / png).stat().st_size > 0
    result = result_of(out, "tasks=4_test=0.1_soft_trial=0")["result"]
    assert result["tasks"] == ["Gujarati", "Sylheti", "Arcadian", "Tibetan"]  # the paper's order
    assert result["image_side"] == 21 and result["iterations"] == [3, 6]
    assert "paper 10%" in (out / "results_table.md").read_text()

    before = mtimes(out)
    run_experiment(get_experiment("omniglot"), out, quick=True, overrides=overrides, data_dir=data)
    assert mtimes(out) == before


def test_celeba_end_to_end_with_landmarks_and_resume(tmp_path):
    data = tmp_path / "data"
    write_fake_celeba(data, n=12, landmarks=True)
    out = tmp_path / "run"
    overrides = dict(available_only=False, image_size=32, batch_size=4, iterations=4, eval_every=2, width=8, verify_data=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_experiment(get_experiment("celeba"), out, quick=True, overrides=overrides, data_dir=data)
    assert summary["trials_finished"] == 4 and not summary["skipped"]
    assert set(summary["mean_test_error"]) == {"parallel", "soft", "soft+landmarks", "soft+identity"}
    for png in ("celeba_usage.png", "celeba_table.png"):
        assert (out / png).stat().st_size > 0
    lm = result_of(out, "soft_landmarks_trial=0")["result"]
    assert lm["landmark_test_mse"] is not None and len(lm["attributes"]) == 40
    assert lm["task_names"][-1] == "landmarks" and len(lm["mixing"]) == 41
    ident = result_of(out, "soft_identity_trial=0")["result"]
    assert len(ident["mixing"][0]) == 5  # four layers and the identity layer
    assert 0.0 <= ident["mean_test_error"] <= 1.0

    before = mtimes(out)
    run_experiment(get_experiment("celeba"), out, quick=True, overrides=overrides, data_dir=data)
    assert mtimes(out) == before


def test_celeba_smoke_on_a_partial_download_skips_missing_landmarks(tmp_path):
    data = tmp_path / "data"
    write_fake_celeba(data, n=20, images=10, landmarks=False)
    out = tmp_path / "run"
    overrides = dict(image_size=32, batch_size=4, iterations=2, eval_every=1, width=8, verify_data=False, methods=["soft", "soft+landmarks"])
    with pytest.warns(UserWarning, match="only 10 of 20"):
        summary = run_experiment(get_experiment("celeba"), out, quick=True, overrides=overrides, data_dir=data)
    assert list(summary["skipped"]) == ["soft+landmarks/trial=0"]
    assert "list_landmarks_align_celeba.txt" in summary["skipped"]["soft+landmarks/trial=0"]
    assert set(summary["mean_test_error"]) == {"soft"}
    result = result_of(out, "soft_trial=0")["result"]
    assert sum(result["split_sizes"].values()) == 10


def test_celeba_full_download_required_without_available_only(tmp_path):
    from softorder.data.errors import DataMissingError

    data = tmp_path / "data"
    write_fake_celeba(data, n=8, images=4, landmarks=False)
    overrides = dict(available_only=False, image_size=32, iterations=1, width=8, verify_data=False, methods=["soft"])
    with pytest.raises(DataMissingError, match="available_only"):
        run_experiment(get_experiment("celeba"), tmp_path / "run", quick=True, overrides=overrides, data_dir=data)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_on_the_real_data(name, data_dir, tmp_path):
    """Tiny runs of each preset on the real files (SOFTORDER_TEST_DATA)."""
    overrides = {
        "uci": dict(trials=1, iterations=10, eval_every=10, dropouts=[0.8], methods=["soft"]),
        "omniglot": dict(num_tasks=[2], iterations=4, eval_every=4, methods=["soft"]),
        "celeba": dict(iterations=2, eval_every=2, methods=["soft"]),
    }[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_experiment(get_experiment(name), tmp_path, quick=True, overrides=overrides, data_dir=data_dir)
    assert summary["trials_finished"] == summary["trials_total"] == 1


def test_omniglot_layer_starts():
    """init="keras": Glorot-uniform weights and zero biases, "he": He-normal convolutions; the scales stay equal."""
    from softorder.experiments.omniglot import reinit_layers

    specs = [TaskSpec(f"a{i}", (1, 21, 21), "multiclass", 4 + i) for i in range(2)]
    model = build_model(specs, ordering="soft", layer="conv", width=53, depth=4, encoder="identity", seed=0)
    reinit_layers(model)
    conv = model.core.layers[0].conv
    assert torch.count_nonzero(conv.bias) == 0
    assert conv.weight.abs().max() <= (6 / (2 * 53 * 9)) ** 0.5 + 1e-6
    assert conv.weight.abs().max() > 1 / (53 * 9) ** 0.5  # wider than PyTorch's default bound
    assert torch.count_nonzero(model.core.logits) == 0
    reinit_layers(model, he_conv=True)
    std = conv.weight.std().item()
    assert abs(std - (2 / (53 * 9)) ** 0.5) < 0.1 * std  # He-normal: variance 2 / fan_in
    assert torch.count_nonzero(conv.bias) == 0
    om = get_experiment("omniglot")
    with pytest.raises(ValueError, match="init must be"):
        om.trials({**om.resolve_config(True, {"init": "orthogonal"}), "experiment": "omniglot"})


# --- trunks ---------------------------------------------------------------------------------------


def test_small_cnn_trunk_and_build_trunk():
    from softorder.trunks import build_trunk

    trunk, features = build_trunk("small-cnn")
    assert trunk(torch.rand(2, 3, 40, 48)).shape == (2, features)
    with pytest.raises(ValueError, match="unknown trunk"):
        build_trunk("alexnet")


def test_resnet50_trunk_without_torchvision_says_how_to_install():
    from softorder.trunks import resnet50_trunk

    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision is installed")
    with pytest.raises(ImportError, match=r"softorder\[vision\]"):
        resnet50_trunk()


def test_plain_resnet50_has_torchvisions_architecture(tmp_path):
    from softorder.trunks import resnet50_plain_trunk

    with pytest.warns(UserWarning, match="from scratch"):
        trunk, features = resnet50_plain_trunk()
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the fc layer
    assert sum(p.numel() for p in trunk.parameters()) == 25_557_032 - 2_049_000
    assert features == 2048
    trunk.eval()
    with torch.no_grad():
        assert trunk(torch.rand(1, 3, 64, 64)).shape == (1, 2048)
    names = list(trunk.state_dict())
    assert names[:2] == ["conv1.weight", "bn1.weight"] and "layer4.2.bn3.running_var" in names
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a ResNet-50 state dict"):
        resnet50_plain_trunk(bad)
    with pytest.raises(ValueError, match="weights=PATH"):
        resnet50_plain_trunk("imagenet")


def test_plain_resnet50_loads_a_torchvision_state_dict(monkeypatch):
    """A torchvision-style state dict (with the ImageNet ``fc.*`` classifier) loads, fc ignored."""
    import softorder.trunks as trunks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, _ = trunks.resnet50_plain_trunk()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    monkeypatch.setattr(trunks, "_load_state_dict_file", lambda path: state)
    loaded, _ = trunks.resnet50_plain_trunk("resnet50-0676ba61.pth")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_trunk_weights_file_roundtrip(tmp_path):
    from softorder.trunks import small_cnn_trunk

    torch.manual_seed(0)
    a, _ = small_cnn_trunk()
    path = tmp_path / "trunk.pt"
    torch.save(a.state_dict(), path)
    b, _ = small_cnn_trunk(path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(FileNotFoundError):
        small_cnn_trunk(tmp_path / "missing.pt")


# --- the Omniglot first-depth shortcut at the paper's shape ---------------------------------------


@pytest.mark.parametrize("ordering", ["soft", "parallel", "permuted"])
def test_omniglot_zero_padding_shortcut_at_paper_shape(ordering):
    """A.3: a 105x105 image zero-padded to 53 channels. The model never builds the padded tensor;
    the result must equal running the core on the explicitly padded input, for 4 ConvPool layers."""
    torch.manual_seed(0)
    specs = [TaskSpec(f"alphabet{i}", (1, 105, 105), "multiclass", 5 + i) for i in range(3)]
    model = build_model(specs, ordering=ordering, layer="conv", width=53, depth=4, encoder="identity", dropout=0.5, seed=1)
    if ordering == "soft":
        with torch.no_grad():
            model.core.logits.normal_(0.0, 1.0)  # not the uniform start: every layer weighs differently
    model.eval()
    x = {s.name: (torch.rand(1, 1, 105, 105) > 0.8).float() for s in specs}
    h, task, names, counts = model.encode(x)
    assert h.shape == (3, 1, 105, 105)  # not materialised
    padded = torch.cat([ZeroPadChannels(53)(x[n]) for n in names])
    assert padded.shape == (3, 53, 105, 105)
    with torch.no_grad():
        lazy = model.core(h, task)
        full = model.core(padded, task)
        assert lazy.shape == (3, 53, 6, 6)
        torch.testing.assert_close(lazy, full, atol=1e-5, rtol=1e-5)
        outputs = model(x)
        for name, y in zip(names, full.split(counts)):
            torch.testing.assert_close(outputs[name], model.decoders[name](y), atol=1e-5, rtol=1e-5)


def test_omniglot_trial_records_are_written_reused_and_guarded(tmp_path, monkeypatch):
    """Each finished trial writes one record; a run into a new --out with the same records skips
    the trial (no training, same result); a run with other settings is refused, naming the file."""
    import softorder.train
    from softorder.experiments.records import read_records

    data, records = tmp_path / "data", tmp_path / "records"
    write_fake_omniglot(data)
    overrides = dict(num_tasks=[2], iterations=4, eval_every=4, methods=["soft", "parallel"], verify_data=False, records=str(records))
    first = run_experiment(get_experiment("omniglot"), tmp_path / "a", quick=True, overrides=overrides, data_dir=data)
    stored = read_records(records)
    assert [r["file"] for r in stored] == [
        "num_tasks=2_test_fraction=0.1_method=parallel_init=he_iterations=4_seed=0.json",
        "num_tasks=2_test_fraction=0.1_method=soft_init=he_iterations=4_seed=0.json",
    ]
    for r in stored:
        assert {"method", "num_tasks", "test_fraction", "iterations", "seed", "init", "padding", "test_error",
                "test_error_by_task", "train_seconds", "commit", "settings"} <= set(r)
        assert 0.0 <= r["result"]["dead_channel_share"] <= 1.0 and isinstance(r["result"]["collapsed"], bool)
        assert set(r["test_error_by_task"]) == set(r["result"]["tasks"])
    written = {p.name: p.read_bytes() for p in records.iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("a recorded trial was trained again")

    with monkeypatch.context() as m:
        m.setattr(softorder.train, "fit", refuse)
        again = run_experiment(get_experiment("omniglot"), tmp_path / "b", quick=True, overrides=overrides, data_dir=data)
    means = lambda summary: {m: v["mean"] for m, v in summary["error_by_cell"]["tasks=2/test=0.1"].items()}  # noqa: E731
    assert means(again) == means(first)  # read back, not retrained
    assert {p.name: p.read_bytes() for p in records.iterdir()} == written  # and the records left as they were
    with pytest.raises(ValueError, match=r"method=soft_init=he_iterations=4_seed=0.json was made with other settings \(lr"):
        run_experiment(get_experiment("omniglot"), tmp_path / "c", quick=True, overrides={**overrides, "lr": 0.5}, data_dir=data)


def test_records_command_rebuilds_the_protocol_tables(tmp_path, capsys):
    """`softorder records omniglot DIR` needs nothing but the records."""
    from softorder.cli import main

    data, records = tmp_path / "data", tmp_path / "records"
    write_fake_omniglot(data)
    overrides = dict(num_tasks=[2], iterations=4, eval_every=4, methods=["parallel"], verify_data=False, records=str(records))
    run_experiment(get_experiment("omniglot"), tmp_path / "run", quick=True, overrides=overrides, data_dir=data)
    assert main(["records", "omniglot", str(records), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "omniglot_protocol.md").read_text()
    assert "| parallel ordering | not run | 27.17 ± 0.57 |" in table  # no 50-alphabet record yet
    assert "num_tasks=2_test_fraction=0.1_method=parallel_init=he_iterations=4_seed=0.json" in table
    assert main(["records", "omniglot", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of trial records" in capsys.readouterr().err


def test_the_start_question_table_counts_collapsed_runs_and_averages_the_others_apart():
    from softorder.experiments.omniglot_records import _start_question

    def record(init, seed, error, collapsed):
        return {"num_tasks": 10, "method": "soft", "init": init, "seed": seed, "test_error": error,
                "result": {"collapsed": collapsed, "dead_channel_share": 1.0 if collapsed else 0.0}}

    table = _start_question([record("keras", 0, 0.97, True), record("keras", 1, 0.25, False), record("he", 0, 0.26, False)])
    assert "| soft ordering | keras | 1 of 2 | 61.00 ± " in table and table.rstrip().count("| 25.00 (n=1) |") == 1
    assert "| soft ordering | he | 0 of 1 | 26.00 (n=1) | 26.00 (n=1) |" in table

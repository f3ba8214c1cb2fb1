"""The library's shape: what importing it loads, the registry of orderings, global state left alone,
one registration per parameter, and the single-process strategy standing in for data parallelism."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import softorder
from softorder import ORDERINGS, TaskSpec, build_model, make_core, make_layers
from softorder.distributed.data_parallel import DataParallel, SingleProcess
from softorder.runtime import torch_threads


@pytest.mark.slow
def test_import_loads_only_the_library():
    code = "import sys, softorder; print(' '.join(sorted(m for m in sys.modules if m.startswith(('softorder', 'ray', 'matplotlib')))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(("ray", "matplotlib"))], loaded
    for heavy in ("softorder.experiments", "softorder.cli", "softorder.distributed.sweep", "softorder.distributed.torchrun", "softorder.data"):
        assert heavy not in loaded, (heavy, loaded)


@pytest.mark.parametrize("name", list(ORDERINGS))
def test_registry_builds_every_ordering(name):
    core = make_core(name, lambda: make_layers("dense", 6, 3), 2)
    assert type(core) is ORDERINGS[name] and core.num_tasks == 2 and core.num_layers == 3
    with pytest.raises(ValueError, match="expected one of"):
        make_core(name + "x", lambda: make_layers("dense", 6, 3), 2)


def test_command_line_offers_the_registered_orderings():
    from softorder.cli import build_parser

    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    ordering = next(a for a in fit._actions if a.dest == "ordering")
    assert list(ordering.choices) == list(ORDERINGS)


def test_build_model_leaves_the_global_random_state_alone():
    specs = [TaskSpec(f"t{i}", (5,), "binary") for i in range(3)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model(specs, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(specs, seed=7)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)  # the seed alone decides the parameters


def test_single_task_cores_register_each_layer_once_and_read_old_checkpoints():
    core = softorder.SingleTaskCores(lambda: [softorder.Dense(4) for _ in range(2)], 3)
    keys = list(core.state_dict())
    assert len(keys) == len(set(keys)) == 3 * 2 * 2 and not any(k.startswith("layers.") for k in keys)
    assert core.layers[0] is core.task_layers[0][0]
    old = dict(core.state_dict())
    old |= {f"layers.{k[len('task_layers.0.'):]}": v for k, v in core.state_dict().items() if k.startswith("task_layers.0.")}
    core.load_state_dict(old)  # written when task 0's layers were registered twice


def test_gap_decoder_refuses_tasks_with_several_outputs():
    specs = [TaskSpec("a", (4,), "multiclass", 3), TaskSpec("b", (4,), "binary")]
    with pytest.raises(ValueError, match=r"decoder 'gap' gives one output per task, but tasks \['a'\]"):
        build_model(specs, decoder="gap")


def test_thread_count_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("a failing trial")
    assert torch.get_num_threads() == before


def test_figures_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from softorder.analysis import plot_layer_usage

    backend = matplotlib.get_backend()
    plot_layer_usage(torch.rand(2, 3, 3).softmax(1), ["a", "b"], tmp_path / "usage.png")
    assert (tmp_path / "usage.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend


def test_single_process_strategy_offers_what_fit_calls_on_data_parallel():
    public = {n for n in vars(DataParallel) if not n.startswith("_")} - {"sum_and_share"}
    single = SingleProcess(torch.device("cpu"))
    for name in public:
        assert hasattr(single, name), name
    batch = softorder.Batch({"a": torch.zeros(3, 2)}, {"a": torch.zeros(3)})
    assert single.shard(batch) == (batch, {"a": 1.0}) and single.seed(5) == 5


def test_task_spec_predict_gives_probabilities_or_values():
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    torch.testing.assert_close(TaskSpec("m", (2,), "multiclass", 3).predict(logits).sum(1), torch.ones(1))
    torch.testing.assert_close(TaskSpec("b", (2,), "binary").predict(torch.zeros(2, 1)), torch.full((2, 1), 0.5))
    torch.testing.assert_close(TaskSpec("r", (2,), "regression").predict(logits), logits)


def test_clear_caches_releases_the_parsed_datasets():
    """Kept on purpose (documented in docs/data.md): the parsed arrays of a dataset stay in the
    process until released, about 1.4 GB for Omniglot at full resolution."""
    from softorder.data import celeba, clear_caches, mnist, omniglot

    mnist._CACHE["probe"] = omniglot._CACHE["probe"] = celeba._CACHE["probe"] = object()
    clear_caches()
    assert "probe" not in mnist._CACHE and "probe" not in omniglot._CACHE and "probe" not in celeba._CACHE


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: softorder.Dense(0), "width of at least 1"),
        (lambda: softorder.ConvPool(0), "at least 1 channel"),
        (lambda: softorder.SoftOrdering([softorder.Dense(4), softorder.Dense(8)], 2), r"one width.*\[4, 8\]"),
    ],
)
def test_bad_layers_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_empty_inputs_are_refused_by_name():
    model = build_model([TaskSpec("a", (3,), "binary")], width=4, depth=2)
    with pytest.raises(ValueError, match=r"no inputs: pass \{task: rows\} for some of the tasks \['a'\]"):
        model({})


def test_resuming_a_checkpoint_of_another_run_is_refused(tmp_path):
    from softorder import TaskArrays, TensorTasks, fit

    x, y = torch.rand(40, 3), torch.randint(0, 2, (40,))
    data = TensorTasks([TaskArrays(TaskSpec("a", (3,), "binary"), {"train": (x, y), "val": (x, y)})])
    config = dict(iterations=4, eval_every=2, progress=False)
    fit(build_model(data.specs, width=4, depth=2, dropout=0.1), data, config, run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings \(lr\)"):
        fit(build_model(data.specs, width=4, depth=2, dropout=0.1), data, {**config, "lr": 0.5}, run_dir=tmp_path)
    with pytest.raises(ValueError, match="the model"):
        fit(build_model(data.specs, width=4, depth=2, dropout=0.3), data, config, run_dir=tmp_path)
    with pytest.raises(ValueError, match="it has trained 4, 2 were asked"):
        fit(build_model(data.specs, width=4, depth=2, dropout=0.1), data, {**config, "iterations": 2}, run_dir=tmp_path)


@pytest.mark.parametrize("value, match", [("1e3", "whole number"), ("{50", "whole number"), ("'[soft]'", "give lists as JSON")])
def test_set_values_are_checked_before_anything_is_written(tmp_path, capsys, value, match):
    from softorder.cli import main

    key = "methods" if "soft" in value else "iterations"
    assert main(["reproduce", "uci", "--quick", "--out", str(tmp_path / "run"), "--set", f"{key}={value.strip(chr(39))}"]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_damaged_result_file_is_named(tmp_path):
    from softorder.experiments.runner import Trial, finished_results

    trial = Trial("t=0", {})
    (tmp_path / "trials" / trial.dirname).mkdir(parents=True)
    (tmp_path / "trials" / trial.dirname / "result.json").write_text('{"result": ')
    with pytest.raises(ValueError, match=r"t=0/result.json is damaged .*delete it"):
        finished_results(tmp_path, [trial])

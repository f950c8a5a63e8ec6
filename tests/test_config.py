"""params.yaml schema: every error names the key path and what is allowed; defaults are
documented in docs/config.md; the config builds the same Study the Python API does."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpo_mlops import ConfigError
from hpo_mlops.config import (
    Config,
    ImportedFunction,
    apply_overrides,
    load_config,
    optimize_kwargs,
    parse_config,
)
from hpo_mlops.objective import Command
from hpo_mlops.study import Study

ROOT = Path(__file__).resolve().parents[1]
BASE = {"study": {"name": "s", "n_trials": 5},
        "space": {"x": "uniform(0, 1)", "lr": "loguniform(1e-5, 1e-1)",
                  "opt": "choices(['sgd', 'adam'])"}}


def check(**changes):
    """BASE with ``section=value`` (or ``section__key=value``) changes, validated."""
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = raw
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DROP:
            node.pop(last)
        else:
            node[last] = value
    return parse_config(raw)


_DROP = object()

# (changes, the whole message) -- the message is the contract, so it is compared exactly
EXACT = [
    (dict(scheduler={"name": "asha", "eta": 1, "max_budget": 9}),
     "scheduler.eta: must be an integer >= 2, got 1"),
    (dict(study__n_trial=3),
     "study.n_trial: unknown key (did you mean 'n_trials'?); allowed: name, metric, mode, "
     "n_trials, timeout, seed, resume, max_failures, max_concurrent, max_retries, resources, checkpoint_dir"),
    (dict(studdy={}),
     "studdy: unknown key (did you mean 'study'?); allowed: study, space, sampler, scheduler, "
     "cluster, tracking, objective, pipeline"),
    (dict(study__n_trials=0), "study.n_trials: must be an integer >= 1, got 0"),
    (dict(study__n_trials=True), "study.n_trials: must be an integer >= 1, got True"),
    (dict(study__timeout=-1), "study.timeout: must be a number of seconds > 0, got -1"),
    (dict(study__resume="maybe"), "study.resume: must be true or false, got 'maybe'"),
    (dict(study__mode="minimize"),
     "study.mode: must be 'min' or 'max' (or a list of them, one per metric), got 'minimize'"),
    (dict(study__name=_DROP),
     "study.name: required (MLflow experiment of the study; also the key for resuming it)"),
    (dict(study__n_trials=_DROP),
     "study.n_trials: required unless study.timeout is set (or the sampler is grid): nothing "
     "else ends the study"),
    (dict(space__lr="loguniform(0, 1)"),
     "space.lr: loguniform needs 0 < low < high, got loguniform(0, 1)"),
    (dict(scheduler="ashaa"),
     "scheduler.name: unknown scheduler 'ashaa' (did you mean 'asha'?); registered: asha, "
     "asha_promotion, async_hyperband, fifo, hyperband, median, pbt, sha"),
    (dict(scheduler={"name": "asha", "max_budgte": 9}),
     "scheduler.max_budgte: unknown option for 'asha' (did you mean 'max_budget'?); allowed: "
     "min_budget, max_budget, eta, brackets, grace_period, strict_quota"),
    (dict(scheduler={"name": "median", "min_trial": 3}),
     "scheduler.min_trial: unknown option for 'median' (did you mean 'min_trials'?); allowed: "
     "min_trials, warmup_steps, max_budget"),
    (dict(scheduler={"eta": 3}),
     "scheduler: a mapping needs 'name' (the scheduler) and its options, got {'eta': 3}"),
    (dict(cluster={"kind": "slurn"}),
     "cluster.kind: unknown cluster kind 'slurn' (did you mean 'slurm'?); registered: "
     "htcondor, local, lsf, moab, oar, pbs, sge, slurm"),
    (dict(cluster={"n_workers": 0}), "cluster.n_workers: must be an integer >= 1, got 0"),
    (dict(cluster={"address": "tcp://h:8786", "n_workers": 2}),
     "cluster.address: connects to a running scheduler, so n_workers cannot apply; remove "
     "them or the address"),
    (dict(tracking=3), "tracking: must be a mapping, got 3"),
    (dict(objective={"command": ["echo", "{lrr}"]}),
     "objective.command: placeholder {lrr} is not a parameter (did you mean 'lr'?); allowed: "
     "x, lr, opt, trial_number, budget"),
    (dict(objective={"function": "math:sqrt", "command": "echo"}),
     "objective: give exactly one of 'function' (Python) or 'command' (an external program)"),
    (dict(objective={"function": "math:sqrtt"}),
     None),  # checked below: the list of math's functions is long
]


@pytest.mark.parametrize(("changes", "message"), EXACT, ids=[m or "import" for _, m in EXACT])
def test_each_error_names_the_key_and_what_is_allowed(changes, message):
    with pytest.raises(ConfigError) as err:
        check(**changes)
    if message is not None:
        assert str(err.value) == message
    else:
        assert str(err.value).startswith(
            "objective.function: math has no function 'sqrtt' (did you mean 'sqrt'?); allowed:")


def test_sampler_errors_come_from_the_sampler_with_the_key_path():
    with pytest.raises(ConfigError, match=r"^sampler\.n_startup: unknown option for 'tpe' "
                       r"\(did you mean 'n_startup_trials'\?\); allowed: .*n_startup_trials"):
        check(sampler={"name": "tpe", "n_startup": 3})
    with pytest.raises(ConfigError, match=r"^sampler\.name: unknown sampler 'tpee' "
                       r"\(did you mean 'tpe'\?\)"):
        check(sampler="tpee")
    with pytest.raises(ConfigError, match=r"^sampler: sampler 'cmaes' cannot express "
                       r"conditional parameters \(m\)"):
        check(sampler="cmaes", space={"o": "choices(['a', 'b'])",
                                      "m": {"dist": "uniform(0, 1)", "when": {"o": "a"}}})


def test_several_errors_are_reported_together_with_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("study: {name: s, n_trials: 0, timeout: -1}\nspace: {x: 'uniform(0, 1)'}\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value) == (f"{p}: study.n_trials: must be an integer >= 1, got 0; "
                              "study.timeout: must be a number of seconds > 0, got -1")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    flow = tmp_path / "flow.yaml"
    flow.write_text("study: {name: s, n_trials: 2}\nspace: {x: uniform(-3, 3)}\n")
    with pytest.raises(ConfigError, match=r"^space\.x: cannot parse.*quote it"):
        load_config(flow)


def test_overrides_are_yaml_values_on_key_paths():
    raw = apply_overrides(BASE, ["study.n_trials=20", "study.seed=3", "sampler=random",
                                 "scheduler.name=asha", "scheduler.max_budget=9",
                                 "cluster.n_workers=2", "space.x=uniform(-1, 1)"])
    assert raw["study"] == {"name": "s", "n_trials": 20, "seed": 3}
    assert raw["scheduler"] == {"name": "asha", "max_budget": 9}
    assert raw["sampler"] == "random" and raw["space"]["x"] == "uniform(-1, 1)"
    assert BASE["study"]["n_trials"] == 5, "the input is not modified"
    cfg = parse_config(raw)
    assert cfg.study.n_trials == 20 and cfg.cluster.n_workers == 2
    # a name first, then an option of it
    assert apply_overrides({"sampler": "tpe"}, ["sampler.seed=1"])["sampler"] == {
        "name": "tpe", "seed": 1}
    with pytest.raises(ConfigError, match="must read key.path=value"):
        apply_overrides(BASE, ["study.n_trials"])
    with pytest.raises(ConfigError, match="study.name is 's', not a mapping"):
        apply_overrides(BASE, ["study.name.x=1"])


def test_docs_list_every_key_with_the_schemas_default():
    """docs/config.md is the one place defaults are written: it must match the schema."""
    text = (ROOT / "docs" / "config.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z_.]+)` \| ([^|]+?) \|", text, re.M))
    expected = {}

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            ann = field.annotation
            section = next((a for a in getattr(ann, "__args__", (ann,))
                            if isinstance(a, type) and hasattr(a, "model_fields")), None)
            if section is not None:
                walk(section, f"{prefix}{name}.")  # a section: its keys are documented
            elif field.is_required():
                expected[prefix + name] = "required"
            else:
                default = field.get_default(call_default_factory=True)
                expected[prefix + name] = f"`{_yaml_scalar(default)}`"

    walk(Config, "")
    assert documented == expected


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if v == [] or v == {}:
        return "[]" if isinstance(v, list) else "{}"
    return str(v)


def test_study_from_config_is_the_python_api_study(tmp_path):
    cfg = check(sampler={"name": "random"}, scheduler={"name": "asha", "max_budget": 9},
                study__metric="acc", study__mode="max", study__seed=7,
                tracking={"enabled": False})
    study = Study.from_config(cfg)
    assert (study.name, study.metrics, study.modes, study.seed) == ("s", ["acc"], ["max"], 7)
    assert study.sampler.name == "random"
    assert study.scheduler_spec == {"name": "asha", "max_budget": 9}
    assert study.space.names == ["x", "lr", "opt"]
    p = tmp_path / "p.yaml"
    p.write_text("study: {name: t, n_trials: 2}\nspace: {x: 'uniform(0, 1)'}\n"
                 "tracking: {enabled: false}\n")
    assert Study.from_config(p).name == "t"
    assert Study.from_config(str(p), resume=False).resume is False


def test_optimize_kwargs_resolve_paths_against_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "obj.py").write_text(textwrap.dedent("""
        def objective(params, trial):
            return params["x"] * 2
        def setup(scale=1):
            return {"scale": scale}
    """))
    p = tmp_path / "params.yaml"
    p.write_text(textwrap.dedent("""
        study: {name: s, n_trials: 3, max_failures: 2}
        space: {x: "uniform(0, 1)"}
        cluster: {n_workers: 2}
        objective: {function: sub/obj.py:objective, setup: sub/obj.py:setup,
                    setup_args: {scale: 3}}
    """))
    kw = optimize_kwargs(load_config(p))
    assert kw["n_trials"] == 3 and kw["max_failures"] == 2 and kw["timeout"] is None
    assert kw["cluster"] == {"kind": "local", "n_workers": 2}
    assert kw["objective"]({"x": 2.0}, None) == 4.0
    assert kw["setup"]() == {"scale": 3}
    # a command runs in the file's folder (or objective.cwd below it)
    p.write_text("study: {name: s, n_trials: 3}\nspace: {x: 'uniform(0, 1)'}\n"
                 "cluster: {address: 'tcp://127.0.0.1:1'}\n"
                 "objective: {command: [sh, run.sh, '{x}'], cwd: sub, env: {A: 1}}\n")
    kw = optimize_kwargs(load_config(p))
    assert isinstance(kw["objective"], Command)
    assert kw["objective"].cwd == str(tmp_path / "sub") and kw["objective"].env == {"A": "1"}
    assert kw["address"] == "tcp://127.0.0.1:1" and "cluster" not in kw


def test_imported_function_pickles_as_text_and_imports_in_a_fresh_process(tmp_path):
    """Dask workers cannot import a user's file by module name; the reference can."""
    (tmp_path / "helper.py").write_text("K = 10\n")
    (tmp_path / "obj.py").write_text("import helper\n"
                                     "def f(params, trial):\n    return params['x'] + helper.K\n")
    fn = ImportedFunction("obj.py:f", tmp_path)
    blob = pickle.dumps(fn)
    assert b"helper" not in blob and len(blob) < 400
    code = "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); print(f({'x': 1}, None))"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                         cwd="/", timeout=60, check=True)
    assert out.stdout.decode().strip() == "11"
    with pytest.raises(ConfigError, match=r"objective.function: no such file .*missing\.py"):
        ImportedFunction("missing.py:f", tmp_path).resolve()
    with pytest.raises(ConfigError, match="must read 'file.py:name' or 'package.module:name'"):
        ImportedFunction("obj.py", tmp_path)


@pytest.mark.parametrize("path", ["params.yaml", "examples/pytorch/params.yaml",
                                  "examples/blackbox/params.yaml"])
def test_shipped_params_files_are_valid(path):
    cfg = load_config(ROOT / path)
    assert cfg.objective is not None and cfg.study.n_trials


def test_schema_defaults_are_the_python_apis():
    """params.yaml without a key behaves like Study(...) without that argument."""
    import inspect

    from hpo_mlops.config import StudySection, TrackingSection

    api = {k: p.default for k, p in inspect.signature(Study.__init__).parameters.items()}
    fields = {**StudySection.model_fields, **Config.model_fields}
    for key in ("metric", "mode", "sampler", "scheduler", "seed", "resume"):
        assert fields[key].default == api[key], key
    assert TrackingSection.model_fields["enabled"].default == api["tracking"]
    assert TrackingSection.model_fields["uri"].default == api["tracking_uri"]

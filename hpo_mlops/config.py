"""The ``params.yaml`` schema: one file describes a whole study, for the CLI and for DVC.

Why a schema of its own and not just ``Study(**yaml)``: people edit this file by hand and
through ``dvc exp run -S key=value``, so every mistake must come back as *where* (the key
path) and *what is allowed*, before a cluster is started::

    scheduler.eta: must be an integer >= 2, got 1
    study.n_trial: unknown key (did you mean 'n_trials'?); allowed: name, metric, ...

The layout (every key and default is documented in ``docs/config.md``, and a test keeps
that page and this module in step)::

    study:     {name, metric, mode, n_trials, timeout, seed, resume, max_failures, max_concurrent,
               max_retries, resources, checkpoint_dir}
    space:     {param: "uniform(0, 1)" | {dist: ..., when: {parent: value}}}
    sampler:   name | {name, **options}
    scheduler: name | {name, **options}
    cluster:   {kind, n_workers, **factory options} | {address}
    tracking:  {uri, enabled, dvc_data}
    objective: {function: "file.py:fn" | "package.module:fn", setup, setup_args}
               | {command: [argv with {param} placeholders], cwd, env}
    pipeline:  free-form parameters of the other stages of a DVC pipeline (not read here)

Rules that belong to a component stay with it: the space is checked by
:class:`~hpo_mlops.space.Space`, sampler and scheduler options by their classes (through
:func:`hpo_mlops.registry.create`), cluster options by the cluster factory. This module
only puts the key path in front of their messages.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError, HPOError, RegistryError, SpaceError

__all__ = [
    "Config",
    "ImportedFunction",
    "apply_overrides",
    "build_study",
    "load_config",
    "optimize_kwargs",
    "parse_config",
]


# -- scalar checks with our own messages (pydantic's own say "Input should be ...") ---------
def _int_at_least(low: int) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"must be an integer >= {low}, got {v!r}")
        return v

    return check


def _positive_number(v: Any) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not v > 0):
        raise ValueError(f"must be a number of seconds > 0, got {v!r}")
    return v


def _boolean(v: Any) -> Any:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _text(v: Any) -> Any:
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise ValueError(f"must be a non-empty string, got {v!r}")
    return v


def _names(v: Any) -> Any:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"must be a name or a list of names, got {v!r}")
    return v


def _modes(v: Any) -> Any:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or any(m not in ("min", "max") for m in items):
        raise ValueError(f"must be 'min' or 'max' (or a list of them, one per metric), got {v!r}")
    return v


def _spec(what: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, str) and v:
            return v
        if isinstance(v, Mapping) and isinstance(v.get("name"), str):
            return dict(v)
        if isinstance(v, Mapping):
            raise ValueError(f"a mapping needs 'name' (the {what}) and its options, got {dict(v)!r}")
        raise ValueError(f"must be a registered {what} name or {{name: ..., **options}}, got {v!r}")

    return check


def _mapping(v: Any) -> Any:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ValueError(f"must be a mapping, got {v!r}")
    return dict(v)


def _paths(v: Any) -> Any:
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"must be a path or a list of paths, got {v!r}")
    return items


def _command(v: Any) -> Any:
    if v is None:
        return v
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, list) and v and all(isinstance(a, str | int | float) for a in v):
        return [str(a) for a in v]
    raise ValueError(f"must be a command line: a string or a list of strings, got {v!r}")


PositiveInt = Annotated[int | None, BeforeValidator(_int_at_least(1))]
NonNegativeInt = Annotated[int | None, BeforeValidator(_int_at_least(0))]
Seconds = Annotated[float | None, BeforeValidator(_positive_number)]
Flag = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str | None, BeforeValidator(_text)]
Names = Annotated[str | list[str], BeforeValidator(_names)]
Modes = Annotated[str | list[str], BeforeValidator(_modes)]
AnyMapping = Annotated[dict[str, Any], BeforeValidator(_mapping)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=False)


class StudySection(_Section):
    """What to optimize and for how long."""

    name: Annotated[str, BeforeValidator(_text)] = Field(
        description="MLflow experiment of the study; also the key for resuming it")
    metric: Names = Field("loss", description="the objective's metric (a list: several objectives)")
    mode: Modes = Field("min", description="min or max, one per metric")
    n_trials: PositiveInt = Field(None, description="trials in total, earlier runs' included")
    timeout: Seconds = Field(None, description="seconds after which no new trial starts")
    seed: NonNegativeInt = Field(None, description="sampler seed (reproducible sequential runs)")
    resume: Flag = Field(True, description="continue the study of this name, if recorded")
    max_failures: NonNegativeInt = Field(None, description="stop once more trials failed")
    max_concurrent: PositiveInt = Field(None, description="trials in flight at most")
    max_retries: NonNegativeInt = Field(3, description="re-runs of a trial whose worker was lost")
    resources: dict[str, float] | None = Field(
        None, description="Dask worker resources each trial holds, e.g. {GPU: 1}")
    checkpoint_dir: Text = Field(
        None, description="where trials keep checkpoints between jobs (shared on HPC)")


class ClusterSection(_Section):
    """Where trials run; options other than these go to the cluster factory of ``kind``."""

    model_config = ConfigDict(extra="allow")
    kind: Annotated[str, BeforeValidator(_text)] = Field(
        "local", description="a registered cluster kind")
    address: Text = Field(None, description="a running Dask scheduler instead of a new cluster")
    n_workers: PositiveInt = Field(None, description="workers (local: one process each)")


class TrackingSection(_Section):
    """Where the MLflow runs go."""

    uri: Text = Field(None, description="MLflow tracking URI")
    enabled: Flag = Field(True, description="log to MLflow at all")
    dvc_data: Annotated[list[str], BeforeValidator(_paths)] = Field(
        default_factory=list,
        description="DVC-tracked paths the study reads; their dvc.lock hash tags every run")


class ObjectiveSection(_Section):
    """The code a trial runs: a Python function or an external command."""

    function: Text = Field(None, description="'file.py:name' or 'package.module:name'")
    setup: Text = Field(None, description="function run once per worker; its result is trial.context")
    setup_args: AnyMapping = Field(default_factory=dict, description="keyword arguments of setup")
    command: Annotated[str | list[str] | None, BeforeValidator(_command)] = Field(
        None, description="argv with {param}, {trial_number}, {budget} placeholders")
    cwd: Text = Field(None, description="working directory of the command")
    env: AnyMapping = Field(default_factory=dict, description="extra environment of the command")


class Config(_Section):
    """A whole ``params.yaml``. ``source`` is the file it came from (relative paths)."""

    study: StudySection
    space: AnyMapping = Field(description="parameter name -> distribution")
    sampler: Annotated[str | dict[str, Any], BeforeValidator(_spec("sampler"))] = Field(
        "tpe", description="a registered sampler name or {name: ..., **options}")
    scheduler: Annotated[str | dict[str, Any], BeforeValidator(_spec("scheduler"))] = Field(
        "median", description="a registered scheduler name or {name: ..., **options}")
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    objective: ObjectiveSection | None = Field(None, description="required by `run`")
    pipeline: AnyMapping = Field(
        default_factory=dict, description="free-form parameters of other DVC stages")

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file this config was read from, if any."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Relative paths in the file (objective files, cwd) are relative to the file."""
        return self._source.parent if self._source else Path.cwd()


# -- loading ---------------------------------------------------------------------------------
def load_config(path: str | os.PathLike[str] = "params.yaml",
                overrides: Sequence[str] = (), check: bool = True) -> Config:
    """Read, override (``key.path=value``), validate; raises :class:`ConfigError`.
    ``check=False`` skips building the components (commands that only read records)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file (a params.yaml describing the study)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: must be a mapping of sections (study, space, ...), got {raw!r}")
    return parse_config(apply_overrides(raw, overrides), source=p, check=check)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["study.n_trials=20", "sampler=random"]``: values are parsed as YAML (so ``20``
    is an int and ``[1, 2]`` a list), as ``dvc exp run -S`` does."""
    import copy

    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: must read key.path=value, e.g. study.n_trials=20")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str) and part in ("sampler", "scheduler"):
                child = {"name": child}  # sampler=tpe, then --set sampler.seed=1
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a mapping"
                )
            node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def parse_config(raw: Mapping[str, Any] | Config, source: str | os.PathLike[str] | None = None,
                 check: bool = True) -> Config:
    """Validate a mapping (a parsed ``params.yaml``); ``check`` also builds the space,
    sampler, scheduler and cluster factory and resolves the objective, so their errors
    come now, with key paths."""
    if isinstance(raw, Config):
        cfg = raw
    else:
        try:
            cfg = Config.model_validate(dict(raw))
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, source)) from None
        cfg._source = Path(source) if source is not None else None
    if check:
        _check(cfg)
    return cfg


def _format_errors(exc: ValidationError, source: Any) -> str:
    msgs = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        path = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            msgs.append(_unknown_key(loc))
        elif err["type"] == "missing":
            msgs.append(f"{path}: required ({_describe(loc)})")
        else:
            text = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("model_type", "dict_type"):
                text = f"must be a mapping, got {err.get('input')!r}"
            msgs.append(f"{path}: {text}")
    head = f"{source}: " if source is not None and len(msgs) > 1 else ""
    return head + "; ".join(msgs)


def _model_at(loc: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _unknown_key(loc: Sequence[str]) -> str:
    parent = _model_at(loc[:-1])
    known = list(parent.model_fields) if parent else []
    return _unknown(".".join(loc), loc[-1], known, "unknown key")


def _unknown(path: str, key: str, known: Sequence[str], what: str) -> str:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"{path}: {what}{hint}; allowed: {', '.join(known) or '(none)'}"


def _describe(loc: Sequence[str]) -> str:
    parent = _model_at(loc[:-1])
    field = parent.model_fields.get(loc[-1]) if parent else None
    return (field.description if field and field.description else "no default")


# -- semantic checks: each component's own rules, behind the key path --------------------------
def _check(cfg: Config) -> None:
    from hpo_mlops.samplers.base import Sampler, split_seed
    from hpo_mlops.schedulers.base import Scheduler
    from hpo_mlops.space import Space

    try:
        space = Space.from_dict(cfg.space)
    except SpaceError as exc:  # "lr: loguniform needs ..." -> "space.lr: loguniform needs ..."
        msg = str(exc)
        name = msg.partition(":")[0].strip("'")
        text = cfg.space.get(name)
        if isinstance(text, str) and text.count("(") != text.count(")"):
            msg += ("; in a YAML {flow: mapping} a comma ends the value, so quote it: "
                    "{x: \"uniform(0, 1)\"}")
        raise ConfigError(f"space.{msg}" if name in cfg.space else f"space: {msg}") from None
    metrics = _as_list(cfg.study.metric)
    modes = _as_list(cfg.study.mode)
    if len(modes) == 1:
        modes = modes * len(metrics)
    if len(modes) != len(metrics):
        raise ConfigError(f"study.mode: needs one of 'min'/'max' for each metric {metrics}, got {cfg.study.mode!r}")

    spec, seed = split_seed(cfg.sampler, cfg.study.seed)
    sampler = _create("sampler", registry.SAMPLERS, spec, Sampler)
    try:
        sampler.setup(space, ["minimize" if m == "min" else "maximize" for m in modes], seed)
    except HPOError as exc:
        raise ConfigError(f"sampler: {exc}") from None
    _create("scheduler", registry.SCHEDULERS, cfg.scheduler, Scheduler, mode=modes[0])
    if cfg.study.n_trials is None and cfg.study.timeout is None and not hasattr(sampler, "size"):
        raise ConfigError("study.n_trials: required unless study.timeout is set (or the sampler "
                          "is grid): nothing else ends the study")
    _check_cluster(cfg.cluster)
    if cfg.objective is not None:
        _check_objective(cfg, space.names)


def _as_list(v: str | list[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def _create(key: str, group: str, spec: Any, base: type, **defaults: Any) -> Any:
    name = spec if isinstance(spec, str) else spec["name"]
    options = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    try:
        cls = registry.load(group, name)
    except RegistryError as exc:
        raise ConfigError(f"{key}.name: {exc}") from None
    _check_option_names(key, name, cls, options, skip=set(defaults))
    try:
        return registry.create(group, spec, base, **defaults)
    except (ConfigError, SpaceError, RegistryError) as exc:
        msg = str(exc)
        # a class that forwards its options (e.g. to Optuna) refuses them with a TypeError
        # that registry.create wraps; name the key like every other message does
        bad = _UNEXPECTED.search(msg)
        if bad:
            accepted = msg.partition("accepts: ")[2].split(", ") if "accepts: " in msg else []
            raise ConfigError(_unknown(f"{key}.{bad[1]}", bad[1], accepted,
                                       f"unknown option for {name!r}")) from None
        raise ConfigError(msg if msg.startswith(f"{key}.") else f"{key}: {msg}") from None


def _check_option_names(key: str, name: str, cls: type, options: Mapping[str, Any],
                        skip: set[str]) -> None:
    """Refuse a misspelt option with the nearest name the class declares.

    The class owns its options, so this only decides what is *certainly* wrong: for a class
    without ``**options`` every unnamed key; for one with ``**options`` (it may pass them
    on, e.g. to Optuna) only keys close to a declared name, i.e. typos. The class's own
    checks run right after, on the values.
    """
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in skip]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    for opt in options:
        if opt in named:
            continue
        near = difflib.get_close_matches(opt, named, n=1, cutoff=0.75)
        if not open_ended or near:
            raise ConfigError(_unknown(f"{key}.{opt}", opt, named, f"unknown option for {name!r}"))


def _check_cluster(cluster: ClusterSection) -> None:
    from hpo_mlops.cluster import make_factory

    if cluster.address is not None:
        extra = [k for k in cluster.model_dump(exclude_none=True) if k not in ("address", "kind")]
        if extra:
            raise ConfigError(
                f"cluster.address: connects to a running scheduler, so {', '.join(extra)} "
                "cannot apply; remove them or the address")
        return
    spec = cluster_spec(cluster)
    try:
        registry.load(registry.CLUSTERS, spec["name"])
    except RegistryError as exc:
        raise ConfigError(f"cluster.kind: {exc}") from None
    try:
        make_factory({"kind": spec.pop("name"), **spec})  # validates, starts nothing
    except (ConfigError, RegistryError) as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("cluster.") else f"cluster: {msg}") from None


def cluster_spec(cluster: ClusterSection) -> dict[str, Any]:
    """``{"name": kind, **options}`` for :func:`registry.create` (factories take options)."""
    opts = cluster.model_dump(exclude_none=True)
    opts.pop("address", None)
    return {"name": opts.pop("kind"), **opts}


_PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_objective(cfg: Config, params: list[str]) -> None:
    obj = cfg.objective
    assert obj is not None
    if (obj.function is None) == (obj.command is None):
        raise ConfigError("objective: give exactly one of 'function' (Python) or 'command' "
                          "(an external program)")
    if obj.function is not None:
        for key in ("cwd", "env"):
            if getattr(obj, key):
                raise ConfigError(f"objective.{key}: only applies to a command objective")
        ImportedFunction(obj.function, cfg.base_dir, "objective.function").resolve()
    else:
        if obj.setup or obj.setup_args:
            raise ConfigError("objective.setup: only applies to a function objective")
        argv = obj.command if isinstance(obj.command, list) else [obj.command]
        known = [*params, "trial_number", "budget"]
        for arg in argv:
            for _, field, _, _ in string.Formatter().parse(arg):
                if field is not None and (not _PLACEHOLDER.match(field) or field not in known):
                    raise ConfigError(_unknown("objective.command", f"{field}",
                                               known, f"placeholder {{{field}}} is not a parameter"))
    if obj.setup is not None:
        ImportedFunction(obj.setup, cfg.base_dir, "objective.setup").resolve()


# -- functions named in the file -------------------------------------------------------------
#: modules imported by path or name in this process (a file is executed once even when
#: both its objective and its setup are named)
_MODULES: dict[str, Any] = {}


class ImportedFunction:
    """A function named ``"path/to/file.py:name"`` or ``"package.module:name"``.

    Why not pass the function itself to Dask: a function from a file that is not on the
    workers' ``sys.path`` is pickled *by reference* and cannot be imported there. This small
    object pickles as its text and imports the function on first call in each process
    (a shared file system is assumed, as for any Dask cluster); ``kwargs`` are bound.
    """

    def __init__(self, target: str, base_dir: str | os.PathLike[str] | None = None,
                 key: str = "objective.function", kwargs: Mapping[str, Any] | None = None) -> None:
        module, sep, attr = target.rpartition(":")
        if not sep or not module or not attr.isidentifier():
            raise ConfigError(f"{key}: must read 'file.py:name' or 'package.module:name', got {target!r}")
        if module.endswith(".py") or os.sep in module or "/" in module:
            module = str((Path(base_dir or ".") / module).resolve())
        self.module, self.attr, self.key = module, attr, key
        self.kwargs = dict(kwargs or {})

    @property
    def target(self) -> str:
        return f"{self.module}:{self.attr}"

    def resolve(self) -> Callable[..., Any]:
        mod = _MODULES.get(self.module)
        if mod is None:
            mod = _MODULES[self.module] = self._import()
        fn = getattr(mod, self.attr, None)
        if not callable(fn):
            names = [n for n in vars(mod) if not n.startswith("_") and callable(vars(mod)[n])]
            raise ConfigError(_unknown(self.key, self.attr, names,
                                       f"{self.module} has no function {self.attr!r}"))
        return fn

    def _import(self) -> Any:
        try:
            if self.module.endswith(".py"):
                path = Path(self.module)
                if not path.is_file():
                    raise ConfigError(f"{self.key}: no such file {self.module}")
                # its own directory first, so it can import the modules beside it
                if str(path.parent) not in sys.path:
                    sys.path.insert(0, str(path.parent))
                digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
                name = f"_hpo_user_{path.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(name, path)
                assert spec is not None and spec.loader is not None
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            else:
                mod = importlib.import_module(self.module)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - any error of the user's module
            raise ConfigError(f"{self.key}: cannot import {self.module}: "
                              f"{type(exc).__name__}: {exc}") from None
        return mod

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **{**self.kwargs, **kwargs})

    def __repr__(self) -> str:
        return f"ImportedFunction({self.target!r})"


# -- config -> Study and optimize() arguments ------------------------------------------------
def build_study(cfg: Config | Mapping[str, Any] | str | os.PathLike[str],
                resume: bool | None = None) -> Any:
    """The :class:`~hpo_mlops.study.Study` a config describes (``Study.from_config``)."""
    from hpo_mlops.study import Study

    if isinstance(cfg, str | os.PathLike):
        cfg = load_config(cfg)
    elif not isinstance(cfg, Config):
        cfg = parse_config(cfg)
    s = cfg.study
    return Study(
        name=s.name, space=cfg.space, metric=s.metric, mode=s.mode, sampler=cfg.sampler,
        scheduler=cfg.scheduler, seed=s.seed, tracking_uri=cfg.tracking.uri,
        resume=s.resume if resume is None else resume, tracking=cfg.tracking.enabled,
    )


def optimize_kwargs(cfg: Config, need_objective: bool = True) -> dict[str, Any]:
    """Keyword arguments of :meth:`Study.optimize` from the config (no client: the caller
    adds ``client=`` when it runs the cluster itself). ``need_objective=False`` (a served
    study, whose trials may all come from HTTP clients): no objective gives ``None``."""
    from hpo_mlops.objective import Command

    obj = cfg.objective
    if obj is None and need_objective:
        raise ConfigError("objective: required to run the study (a function or a command)")
    kwargs: dict[str, Any] = {
        "n_trials": cfg.study.n_trials, "timeout": cfg.study.timeout,
        "max_failures": cfg.study.max_failures, "max_concurrent": cfg.study.max_concurrent,
        "max_retries": cfg.study.max_retries, "resources": cfg.study.resources,
        "checkpoint_dir": (str(cfg.base_dir / cfg.study.checkpoint_dir)
                           if cfg.study.checkpoint_dir else None),
    }
    if obj is None:
        kwargs["objective"] = None
    elif obj.function is not None:
        kwargs["objective"] = ImportedFunction(obj.function, cfg.base_dir)
    else:
        cwd = str((cfg.base_dir / obj.cwd) if obj.cwd else cfg.base_dir)
        kwargs["objective"] = Command(obj.command, cwd=cwd,
                                      env={k: str(v) for k, v in obj.env.items()},
                                      metric=_as_list(cfg.study.metric)[0])
    if obj is not None and obj.setup is not None:
        kwargs["setup"] = ImportedFunction(obj.setup, cfg.base_dir, "objective.setup",
                                           obj.setup_args)
    if cfg.cluster.address is not None:
        kwargs["address"] = cfg.cluster.address
    else:
        spec = cluster_spec(cfg.cluster)
        kwargs["cluster"] = {"kind": spec.pop("name"), **spec}
    return kwargs

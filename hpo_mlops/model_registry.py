"""The MLflow Model Registry: the chosen model of a study, under the study's name.

Why: a pipeline's consumer (a serving job, a notebook) asks the registry for
``models:/<study>@champion`` and gets the model the latest pipeline run chose, with tags
that lead back to the exact code (git commit), data (DVC hash), study run and trial that
produced it.

Why the identity key: ``dvc repro -f`` or a rerun of ``train_best`` with nothing changed
must not pile up identical versions. Every version carries ``hpo.registry_key``, a hash of
the tags that identify it (commit, data hash, study run, trial, model bytes: whatever the
caller passes); registering again with the same tags finds that version and only points
the alias at it again (it may have moved to another version meanwhile). Not guarded: two
processes registering the same new key at the same instant can each create a version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hpo_mlops.errors import ConfigError

__all__ = ["CHAMPION", "REGISTRY_KEY", "Registered", "registry_key", "register_model"]

CHAMPION = "champion"
#: the version tag holding :func:`registry_key` of its other tags
REGISTRY_KEY = "hpo.registry_key"
#: tags of a version the train_best stage writes (besides the provenance tags)
STUDY_RUN, BEST_TRIAL, MODEL_SHA256 = "hpo.study_run_id", "hpo.best_trial", "hpo.model_sha256"
#: the version tag naming the logged model (``models:/<model_id>``) it was made from
LOGGED_MODEL = "hpo.logged_model"


@dataclass(frozen=True)
class Registered:
    """The registered version an alias now points to (``tags``: as set on the version)."""

    name: str
    version: int
    alias: str
    created: bool  # False: an existing version with the same tags was re-used
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        """``models:/<name>@<alias>``: what a consumer loads."""
        return f"models:/{self.name}@{self.alias}"


def registry_key(tags: Mapping[str, str]) -> str:
    """sha256 of the tags (sorted, as JSON): equal tags, equal key."""
    canon = json.dumps({str(k): str(v) for k, v in tags.items()}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _model_id(uri: str) -> str | None:
    """``m-...`` of a ``models:/<model_id>`` URI (MLflow 3's logged models), else None."""
    rest = uri.removeprefix("models:/")
    return rest if rest != uri and "/" not in rest and "@" not in rest and rest else None


def register_model(
    name: str,
    model: str | Callable[[], str],
    tags: Mapping[str, str],
    *,
    run_id: str | None = None,
    info_tags: Mapping[str, str] | None = None,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> Registered:
    """Register a model version under ``name`` and point ``alias`` at it, unless a version
    with the same ``tags`` exists: then point ``alias`` at that one and create nothing.

    ``model``: the model's URI (``info.model_uri`` from ``mlflow.<flavor>.log_model``, i.e.
    ``models:/<model_id>``, or ``runs:/<run>/<path>``), or a callable that logs the model and
    returns that URI; a callable is only called when a new version is needed, so a rerun
    with unchanged inputs logs nothing either. ``tags``: what identifies this model (e.g.
    git commit, DVC data hash, study run id, best trial, a hash of the model bytes); they
    are set on the version, with :data:`REGISTRY_KEY` computed from them. ``info_tags``:
    set on a new version too, but not part of its identity (e.g. ``git.dirty``, which a
    ``dvc.lock`` rewritten by the pipeline itself flips). ``run_id``: the
    run the version links to in the UI (the study run). ``tracking_uri`` /
    ``registry_uri``: the stores (MLflow's defaults when None; on a sqlite or database
    tracking store the registry lives in the same database).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"register_model: name must be a non-empty string, got {name!r}")
    if not isinstance(alias, str) or not alias or alias.lower() == "latest" \
            or alias.lower().startswith("v") and alias[1:].isdigit():
        raise ConfigError(f"register_model: alias must be a name other than 'latest' or "
                          f"v<number> (MLflow reserves those), got {alias!r}")
    if not callable(model):
        _check_uri(model)
    clean = {str(k): str(v) for k, v in tags.items() if k != REGISTRY_KEY}
    key = registry_key(clean)
    for logger in ("mlflow.store", "mlflow.tracking", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri, registry_uri)
    try:
        client.create_registered_model(name, description="hpo-mlops: the chosen model of "
                                       f"study {name!r}; alias {alias!r} is the current one")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    found = _find_version(client, name, key)
    if found is not None:
        client.set_registered_model_alias(name, alias, found.version)
        return Registered(name, int(found.version), alias, False, found.source,
                          dict(found.tags))
    uri = _check_uri(model() if callable(model) else model)
    source, model_id = uri, _model_id(uri)
    all_tags = {**{str(k): str(v) for k, v in (info_tags or {}).items()}, **clean,
                REGISTRY_KEY: key}
    if model_id is not None:
        # The sqlite/SQL registry resolves a models:/ source with a client of the *global*
        # tracking URI (an MLflow TODO); resolved here with this client, the version works
        # whatever the global URI is. The logged model stays named in a tag.
        logged = client.get_logged_model(model_id)
        source, run_id = logged.artifact_location, run_id or logged.source_run_id
        all_tags[LOGGED_MODEL] = uri
    version = client.create_model_version(name, source=source, run_id=run_id, tags=all_tags,
                                          model_id=model_id)
    client.set_registered_model_alias(name, alias, version.version)
    return Registered(name, int(version.version), alias, True, version.source, all_tags)


def _find_version(client: Any, name: str, key: str) -> Any:
    """The newest version of ``name`` tagged with ``key`` (None if none)."""
    quoted = name.replace("'", "\\'")
    found = client.search_model_versions(
        f"name = '{quoted}' and tags.`{REGISTRY_KEY}` = '{key}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def _check_uri(uri: Any) -> str:
    if not isinstance(uri, str) or ":/" not in uri:
        raise ConfigError(f"register_model: model must be a model URI (models:/..., runs:/...)"
                          f" or a callable returning one, got {uri!r}")
    return uri

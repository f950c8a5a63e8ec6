"""register_model on a real MLflow sqlite store: one version for one set of tags, a new one
(and the champion alias moved) when a tag changes, the alias moved back on a rerun of an
older pipeline state, tags on the version, and a model logged only when it is needed."""

from __future__ import annotations

import pytest
from mlflow_store import fresh_store

from hpo_mlops.errors import ConfigError
from hpo_mlops.model_registry import CHAMPION, REGISTRY_KEY, register_model


@pytest.fixture
def store(tmp_path):
    """A migrated sqlite store, a study run on it and a tiny logged sklearn model."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from mlflow.tracking import MlflowClient
    from sklearn.dummy import DummyClassifier

    uri = fresh_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("digits", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, run_name="digits")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    logged: list[str] = []

    def log() -> str:
        model = DummyClassifier().fit(np.zeros((4, 2)), [0, 1, 0, 1])
        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="pickle",
                                            pip_requirements=["scikit-learn"])
        logged.append(info.model_uri)
        return info.model_uri

    yield uri, client, run.info.run_id, log, logged
    mlflow.set_tracking_uri(previous)


TAGS = {"mlflow.source.git.commit": "a" * 40, "dvc.data_hash": "d41d8cd98f00",
        "hpo.study_run_id": "r1", "hpo.best_trial": "7", "hpo.model_sha256": "m1"}


def test_same_tags_give_one_version_and_a_change_moves_champion(store):
    uri, client, run_id, log, logged = store
    first = register_model("digits", log, TAGS, run_id=run_id, tracking_uri=uri,
                           info_tags={"git.dirty": "false"})
    assert (first.version, first.created, first.uri) == (1, True, "models:/digits@champion")
    again = register_model("digits", log, TAGS, run_id=run_id, tracking_uri=uri,
                           info_tags={"git.dirty": "true"})
    assert (again.version, again.created) == (1, False)
    assert len(logged) == 1, "an unchanged rerun logs no second model"
    assert [int(v.version) for v in client.search_model_versions("name = 'digits'")] == [1]

    version = client.get_model_version_by_alias("digits", CHAMPION)
    assert int(version.version) == 1 and version.run_id == run_id
    assert {k: version.tags[k] for k in TAGS} == TAGS, "every identifying tag is on the version"
    assert version.tags["git.dirty"] == "false", "info tags are the first registration's"
    assert version.tags[REGISTRY_KEY] == first.tags[REGISTRY_KEY]
    assert version.tags["hpo.logged_model"] == logged[0], "the version names its logged model"

    changed = register_model("digits", log, {**TAGS, "dvc.data_hash": "other"}, run_id=run_id,
                             tracking_uri=uri)
    assert (changed.version, changed.created) == (2, True)
    assert int(client.get_model_version_by_alias("digits", CHAMPION).version) == 2
    assert client.get_model_version("digits", "2").tags["dvc.data_hash"] == "other"

    back = register_model("digits", log, TAGS, run_id=run_id, tracking_uri=uri)
    assert (back.version, back.created) == (1, False)
    assert int(client.get_model_version_by_alias("digits", CHAMPION).version) == 1, \
        "going back to the first pipeline state points champion at its version again"
    assert len(client.search_model_versions("name = 'digits'")) == 2 and len(logged) == 2


def test_the_registered_champion_loads(store):
    import mlflow.pyfunc
    import numpy as np

    uri, _, run_id, log, _ = store
    reg = register_model("digits", log, TAGS, run_id=run_id, tracking_uri=uri)
    model = mlflow.pyfunc.load_model(reg.uri)
    assert list(model.predict(np.zeros((3, 2)))) == [0, 0, 0]


def test_a_uri_and_a_second_alias(store):
    uri, client, run_id, log, _ = store
    model_uri = log()
    reg = register_model("other-study", model_uri, {"hpo.best_trial": "1"}, alias="staging",
                         tracking_uri=uri)
    assert (reg.version, reg.alias) == (1, "staging")
    assert int(client.get_model_version_by_alias("other-study", "staging").version) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": ""}, "name must be a non-empty string"),
    ({"alias": "latest"}, "alias must be a name other than 'latest'"),
    ({"alias": "v3"}, "alias must be a name other than 'latest'"),
    ({"model": ""}, "model must be a model URI"),
    ({"model": "model.pkl"}, "model must be a model URI"),
])
def test_bad_arguments_name_what_is_allowed(store, kwargs, message):
    uri = store[0]
    args = {"name": "digits", "model": "runs:/x/model", "tags": TAGS, **kwargs}
    with pytest.raises(ConfigError, match=message):
        register_model(args.pop("name"), args.pop("model"), args.pop("tags"), tracking_uri=uri,
                       **args)

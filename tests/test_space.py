"""The search-space DSL: every form, every error, conditional parameters."""

from __future__ import annotations

import numpy as np
import pytest

from hpo_mlops.space import (
    Choices,
    Condition,
    Normal,
    Param,
    RandInt,
    Space,
    SpaceError,
    Uniform,
    choices,
    loguniform,
    randint,
    uniform,
)


@pytest.mark.parametrize(
    "text, dist",
    [
        ("uniform(-5, 5)", Uniform(-5, 5)),
        ("uniform(0, 1, q=0.25)", Uniform(0, 1, 0.25)),
        ("uniform(0, 1, step=0.25)", Uniform(0, 1, 0.25)),
        ("uniform(1e-3, 1, log=True)", Uniform(1e-3, 1, None, True)),
        ("loguniform(1e-5, 1e-1)", Uniform(1e-5, 1e-1, None, True)),
        ("loguniform(1, 1000, q=10)", Uniform(1, 1000, 10, True)),
        ("randint(1, 4)", RandInt(1, 4)),
        ("randint(0, 100, q=10)", RandInt(0, 100, 10)),
        ("randint(1, 1024, log=True)", RandInt(1, 1024, 1, True)),
        ("normal(0, 1)", Normal(0, 1)),
        ("normal(0, 1, q=0.5)", Normal(0, 1, 0.5)),
        ("lognormal(0, 1)", Normal(0, 1, None, True)),
        ("choices(['relu', 'tanh'])", Choices(("relu", "tanh"))),
        ("choices([1, 2.5, True, None, 'x'])", Choices((1, 2.5, True, None, "x"))),
    ],
)
def test_every_form_parses_and_round_trips(text, dist):
    space = Space.from_dict({"p": text})
    assert space["p"].dist == dist
    again = Space.from_dict(space.to_dict())
    assert again == space


def test_python_objects_equal_strings():
    a = Space.from_dict({"lr": loguniform(1e-5, 1e-1), "n": randint(1, 4),
                         "act": choices(["relu", "tanh"]), "x": uniform(0, 1, q=0.1)})
    b = Space.from_dict({"lr": "loguniform(1e-5, 1e-1)", "n": "randint(1, 4)",
                         "act": "choices(['relu', 'tanh'])", "x": "uniform(0, 1, q=0.1)"})
    assert a == b
    # a bare list is a choice
    assert Space.from_dict({"act": ["a", "b"]})["act"].dist == Choices(("a", "b"))


def test_samples_stay_in_range_and_on_grid():
    space = Space.from_dict({
        "u": "uniform(-1, 1)", "q": "uniform(0, 1, q=0.25)", "lg": "loguniform(1e-4, 1e-1)",
        "i": "randint(1, 4)", "iq": "randint(0, 100, q=10)", "il": "randint(1, 64, log=True)",
        "n": "normal(3, 0.1)", "c": "choices(['a', 'b'])",
    })
    rng = np.random.default_rng(0)
    seen_i = set()
    for _ in range(400):
        p = space.sample(rng)
        assert space.validate_params(p) == p
        assert p["q"] in (0, 0.25, 0.5, 0.75, 1.0)
        assert p["iq"] % 10 == 0
        assert 1e-4 <= p["lg"] <= 1e-1
        assert isinstance(p["i"], int) and isinstance(p["u"], float)
        seen_i.add(p["i"])
    assert seen_i == {1, 2, 3, 4}, "randint includes both ends"


def test_conditional_parameters():
    space = Space.from_dict({
        "momentum": "uniform(0.5, 0.99) if optimizer == 'sgd'",
        "optimizer": "choices(['sgd', 'adam', 'rms'])",
        "beta": {"dist": "uniform(0.8, 0.999)", "when": {"optimizer": ["adam", "rms"]}},
    })
    assert space.names[0] == "optimizer", "parents are ordered before children"
    assert space["momentum"].condition == Condition("optimizer", ("sgd",))
    assert space["beta"].condition == Condition("optimizer", ("adam", "rms"))
    rng = np.random.default_rng(1)
    for _ in range(100):
        p = space.sample(rng)
        assert ("momentum" in p) == (p["optimizer"] == "sgd")
        assert ("beta" in p) == (p["optimizer"] != "sgd")
    assert space.is_conditional


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"lr": "loguniform(0, 1)"}, "lr: loguniform needs 0 < low < high, got loguniform(0, 1)"),
        ({"lr": "uniform(1, 1)"}, "lr: uniform needs low < high, got uniform(1, 1)"),
        ({"lr": "uniform(0, 1, q=-1)"}, "lr: q must be > 0"),
        ({"n": "randint(1.5, 3)"}, "n: randint needs integers, got low=1.5 (in 'randint(1.5, 3)')"),
        ({"n": "randint(3, 3)"}, "n: randint needs low < high (both included)"),
        ({"n": "randint(0, 8, log=True)"}, "n: randint with log=True needs 1 <= low"),
        ({"s": "normal(0, 0)"}, "s: normal needs sigma > 0"),
        ({"c": "choices([])"}, "c: choices needs at least one option"),
        ({"c": "choices(['a', 'a'])"}, "c: choices has duplicate options"),
        ({"c": "choices('ab')"}, "c: choices needs a list"),
        ({"x": "gaussian(0, 1)"}, "x: unknown distribution 'gaussian'; allowed forms: uniform(low, high)"),
        ({"x": "uniform(0, 1, step=2, foo=3)"}, "x: uniform got unknown argument(s) ['foo']"),
        ({"x": "uniform(0)"}, "x: uniform needs 2 argument(s): low, high"),
        ({"x": "uniform(0, 1"}, "x: cannot parse"),
        ({"x": 3}, "x: expected a string such as 'uniform(0, 1)'"),
        ({"x": "uniform(0, 1) if y == 'a'"}, "x: condition refers to unknown parameter 'y'"),
        ({"x": "uniform(0, 1) if y == 'c'", "y": "choices(['a', 'b'])"},
         "x: condition value 'c' is not one of y's options"),
        ({"x": "uniform(0, 1) if y == 1", "y": "uniform(0, 2)"},
         "x: a condition's parent must be a choices(...) parameter"),
        ({"x": "uniform(0, 1) if y > 1", "y": "choices([1, 2])"}, "x: condition 'y > 1' must read"),
        ({"a": "choices([1, 2]) if b == 1", "b": "choices([1, 2]) if a == 1"}, "conditions form a cycle"),
        ({"1x": "uniform(0, 1)"}, "'1x': parameter names must be identifiers"),
        ({}, "the space must be a non-empty mapping"),
    ],
)
def test_bad_spaces_are_refused_with_the_parameter_and_text(spec, message):
    with pytest.raises(SpaceError) as info:
        Space.from_dict(spec)
    assert message in str(info.value)


def test_validate_params_rejects_values_outside():
    space = Space.from_dict({"x": "uniform(0, 1)", "n": "randint(1, 4)"})
    with pytest.raises(SpaceError, match="x: 2 is outside uniform"):
        space.validate_params({"x": 2, "n": 1})
    with pytest.raises(SpaceError, match="n: missing"):
        space.validate_params({"x": 0.5})
    assert space.validate_params({"x": np.float64(0.5), "n": np.int64(2)}) == {"x": 0.5, "n": 2}


def test_normal_quantile_mapping_round_trips():
    d = Normal(2.0, 0.5)
    for v in (1.0, 2.0, 3.3):
        assert d.from_quantile(d.to_quantile(v)) == pytest.approx(v, rel=1e-9)
    ln = Normal(0.0, 1.0, log=True)
    assert ln.from_quantile(0.5) == pytest.approx(1.0)


def test_param_objects_with_conditions():
    space = Space.from_dict({"opt": choices(["sgd", "adam"]),
                             "m": Param("m", uniform(0, 1), Condition("opt", ("sgd",)))})
    assert space.to_dict()["m"] == "uniform(0, 1) if opt == 'sgd'"

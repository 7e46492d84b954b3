import numpy as np
import pytest

from world.actions import ACTION_DIM, KEYS, Action, ActionError, actions_to_array


def test_keys_are_canonicalised_and_deduplicated():
    a = Action(("turn_left", "forward", "forward"), 0.5, -0.25)
    assert a.keys == ("forward", "turn_left")
    assert a.held("forward") and not a.held("back")


def test_vector_round_trip():
    a = Action(("back", "rise"), -1.0, 0.75)
    v = a.to_vector()
    assert v.shape == (ACTION_DIM,) and v.dtype == np.float32
    assert v[KEYS.index("back")] == 1 and v[KEYS.index("forward")] == 0
    assert Action.from_vector(v) == a


def test_json_round_trip():
    a = Action(("left",), 0.1, 0.2)
    assert Action.from_json(a.to_json()) == a


@pytest.mark.parametrize(
    "obj",
    [
        {"keys": ["jump"]},
        {"keys": "forward"},
        {"mouse": [2.0, 0.0]},
        {"mouse": [float("nan"), 0.0]},
        {"mouse": [0.0]},
        {"mouse": ["a", 0.0]},
        {"mouse": [True, 0.0]},
        {"keys": [], "extra": 1},
        ["forward"],
        None,
    ],
)
def test_bad_actions_are_refused_with_a_reason(obj):
    with pytest.raises(ActionError):
        Action.from_json(obj)


def test_actions_to_array():
    arr = actions_to_array([Action(), Action(("forward",))])
    assert arr.shape == (2, ACTION_DIM)
    assert actions_to_array([]).shape == (0, ACTION_DIM)

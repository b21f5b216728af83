import copy

import numpy as np
import pandas as pd
import pytest
from mask_contest import DISAGREEING, LABELS, LAYOUT, write_mask_contest
from sklearn.metrics import f1_score

from comp.config import class_names, parse_labels
from comp.data._attributes import attribute_f1, compose_probs, decompose, encode, marginals, targets
from comp.data._layout import read_layout
from comp.errors import CompError

MASKS = ["wear", "incorrect", "not_wear"]
GENDERS = ["male", "female"]
AGES = ["young", "middle", "old"]


def labels(**attribute_changes) -> dict:
    """The contest label spec with some attributes' keys changed (None removes a key)."""
    spec = copy.deepcopy(LABELS)
    for name, changes in attribute_changes.items():
        for k, v in changes.items():
            if v is None:
                spec["attributes"][name].pop(k, None)
            else:
                spec["attributes"][name][k] = v
    return spec


def expect_error(fn, *fragments: str) -> None:
    """``fn()`` fails with a one-line CompError naming every fragment."""
    with pytest.raises(CompError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.fixture
def rows(tmp_path) -> pd.DataFrame:
    return read_layout(LAYOUT, root=write_mask_contest(tmp_path / "mask"))


def test_eighteen_class_names_in_code_order():
    names = class_names(LABELS)
    assert len(names) == 18 and len(set(names)) == 18
    assert names[0] == "wear_male_young" and names[4] == "wear_female_middle" and names[17] == "not_wear_female_old"
    for code, name in enumerate(names):
        parts = decompose(code, LABELS)
        assert name == f"{MASKS[parts['mask']]}_{GENDERS[parts['gender']]}_{AGES[parts['age']]}"
        assert code == parts["mask"] * 6 + parts["gender"] * 3 + parts["age"]


def test_default_code_is_the_mixed_radix_product():
    explicit = parse_labels(LABELS)
    default = parse_labels({"attributes": LABELS["attributes"]})
    assert np.array_equal(explicit.code_of, default.code_of)
    assert class_names(default) == class_names(explicit)


def test_another_bijective_formula_reorders_the_classes():
    spec = {**LABELS, "code": "age * 6 + (gender * 3) + mask"}
    names = class_names(spec)
    assert names[:4] == [
        "wear_male_young",
        "incorrect_male_young",
        "not_wear_male_young",
        "wear_female_young",
    ]
    codes = np.arange(18)
    parts = decompose(codes, spec)
    assert np.array_equal(parts["age"] * 6 + parts["gender"] * 3 + parts["mask"], codes)


def test_contest_codes_by_hand(rows):
    codes, parts = encode(rows, LABELS)
    by_id = dict(zip(rows["id"], codes))
    assert by_id["000001_female_Asian_45/mask3"] == 0 * 6 + 1 * 3 + 1
    assert by_id["000001_male_Asian_29/mask1"] == 0
    assert by_id["001498-1_female_Asian_30/normal"] == 2 * 6 + 1 * 3 + 1
    assert by_id["000004_male_Asian_59/incorrect_mask"] == 1 * 6 + 0 * 3 + 1
    assert by_id["000005_male_Asian_60/normal"] == 2 * 6 + 0 * 3 + 2
    assert by_id["000006_male_Asian_18/incorrect_mask"] == 1 * 6 + 0 * 3 + 0
    assert np.array_equal(codes, parts["mask"] * 6 + parts["gender"] * 3 + parts["age"])
    assert codes.dtype == np.int64 and set(np.bincount(parts["mask"])) == {len(rows) * 5 // 7, len(rows) // 7}
    back = decompose(codes, LABELS)
    assert all(np.array_equal(back[k], parts[k]) for k in parts)


def test_the_source_picks_folder_name_or_csv_column(rows):
    trust_csv = labels(gender={"source": "gender"})
    folder_codes, _ = encode(rows, LABELS)
    csv_codes, _ = encode(rows, trust_csv)
    differs = rows["id"].to_numpy()[folder_codes != csv_codes]
    assert len(differs) == 7 and all(i.startswith(DISAGREEING) for i in differs)
    assert dict(zip(rows["id"], csv_codes))[f"{DISAGREEING}/normal"] == 2 * 6 + 1 * 3 + 2


def test_age_bins_at_the_edges_and_training_bins():
    df = pd.DataFrame(
        {
            "mask": ["normal"] * 7,
            "folder_gender": ["male"] * 7,
            "folder_age": ["18", "29", "30", "57", "58", "59", "60"],
        }
    )
    _, score = encode(df, LABELS)
    _, train = encode(df, LABELS, train=True)
    assert score["age"].tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert train["age"].tolist() == [0, 0, 1, 1, 2, 2, 2]
    both = targets(df, LABELS)
    assert both.score_codes.tolist() == (12 + score["age"]).tolist()
    assert both.train_codes.tolist() == (12 + train["age"]).tolist()
    assert np.array_equal(both.train["mask"], both.score["mask"])
    without = labels(age={"train_bins": None})
    assert np.array_equal(encode(df, without, train=True)[0], encode(df, without)[0])


def test_compose_of_one_hot_attributes_is_the_one_hot_class():
    eye = [np.eye(3), np.eye(2), np.eye(3)]
    for m in range(3):
        for g in range(2):
            for a in range(3):
                probs = compose_probs([eye[0][m], eye[1][g], eye[2][a]], LABELS)
                assert probs.shape == (18,) and probs[m * 6 + g * 3 + a] == 1.0 and probs.sum() == 1.0


def test_marginals_undo_compose():
    rng = np.random.default_rng(0)
    parts = {name: rng.dirichlet(np.ones(k), size=5) for name, k in (("mask", 3), ("gender", 2), ("age", 3))}
    probs = compose_probs(parts, LABELS)
    assert probs.shape == (5, 18) and np.allclose(probs.sum(1), 1.0)
    back = marginals(probs, LABELS)
    assert all(np.allclose(back[k], parts[k]) for k in parts)
    listed = compose_probs([parts["mask"], parts["gender"], parts["age"]], LABELS)
    assert np.array_equal(listed, probs)


def test_marginals_of_class_probabilities():
    probs = np.zeros((2, 18))
    probs[0, 16] = 1.0  # not_wear_female_middle
    probs[1, [0, 5]] = 0.5  # wear_male_young, wear_female_old
    out = marginals(probs, LABELS)
    assert out["mask"].tolist() == [[0, 0, 1], [1, 0, 0]]
    assert out["gender"].tolist() == [[0, 1], [0.5, 0.5]]
    assert out["age"].tolist() == [[0, 1, 0], [0.5, 0, 0.5]]


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (labels(age={"bins": [60, 30]}), ("attributes.age.bins", "[60, 30]", "increasing")),
        (labels(age={"bins": [30], "train_bins": None}), ("attributes.age.bins", "1 edges for 3 values")),
        (labels(age={"train_bins": [30, 58, 70]}), ("attributes.age.train_bins", "3 edges for 3 values")),
        (labels(age={"bins": [30, "x"]}), ("attributes.age.bins", "finite numbers")),
        (labels(age={"bins": None}), ("attributes.age.train_bins", "needs")),
        (labels(mask={"map": {"mask1": "waer"}}), ("attributes.mask.map", "'waer'", "did you mean 'wear'")),
        (labels(mask={"bins": [1]}), ("attributes.mask", "both map and bins")),
        (labels(gender={"values": ["male", "male"]}), ("attributes.gender.values", "'male' twice")),
        (labels(gender={"values": ["male"]}), ("attributes.gender.values", "two or more")),
        (labels(gender={"sorce": "x"}), ("attributes.gender.sorce", "did you mean 'source'")),
        ({**LABELS, "code": "mask * 6 + sex * 3 + age"}, ("data.labels.code", "'sex'", "not an attribute")),
        (
            {**LABELS, "code": "mask * 3 + gender * 3 + age"},
            ("data.labels.code", "the same code", "wear_female_young"),
        ),
        ({**LABELS, "code": "mask * 6 + gender * 3 + age + 1"}, ("data.labels.code", "outside 0..17")),
        ({**LABELS, "code": "mask * 6 + gender * 3"}, ("data.labels.code", "the same code")),
        (
            {**LABELS, "code": "mask * 6 + gender * 3 - age"},
            ("data.labels.code", "operator '-' is not allowed"),
        ),
        (
            {**LABELS, "code": "mask ** 2 + gender + age"},
            ("data.labels.code", "operator '**' is not allowed"),
        ),
        ({**LABELS, "code": "2.5 * mask + gender + age"}, ("data.labels.code", "'2.5' is not allowed")),
        (
            {**LABELS, "code": "__import__('os').system('true')"},
            ("data.labels.code", "a function call is not allowed"),
        ),
        ({**LABELS, "code": "mask *"}, ("data.labels.code", "is not a formula")),
        ({**LABELS, "cdoe": "x"}, ("data.labels.cdoe", "did you mean 'code'")),
        ({"attributes": {}}, ("data.labels.attributes", "must map")),
        (
            {"attributes": {"a": {"values": ["x_y", "x"]}, "b": {"values": ["z", "y_z"]}}},
            ("class name 'x_y_z' arises twice",),
        ),
    ],
)
def test_bad_spec_is_a_one_line_error(spec, fragments):
    expect_error(lambda: parse_labels(spec), *fragments)


def test_unknown_source_column(rows):
    spec = labels(gender={"source": "folder_gendr"})
    expect_error(
        lambda: parse_labels(spec, columns=rows.columns),
        "gender.source",
        "'folder_gendr'",
        "did you mean 'folder_gender'",
    )
    expect_error(lambda: encode(rows, spec), "gender.source", "'folder_gendr' not found")


def test_value_outside_the_map_names_the_row():
    df = pd.DataFrame(
        {
            "id": ["p/mask1", "p/mask6"],
            "mask": ["mask1", "mask6"],
            "folder_gender": ["male"] * 2,
            "folder_age": ["40"] * 2,
        }
    )
    expect_error(lambda: encode(df, LABELS), "row 1 (id 'p/mask6')", "mask 'mask6'", "attributes.mask.map")
    df.loc[1, "mask"] = "mask2"
    df.loc[0, "folder_gender"] = "Male"
    expect_error(
        lambda: encode(df, LABELS),
        "row 0 (id 'p/mask1')",
        "'Male'",
        "attributes.gender.values",
        "did you mean 'male'",
    )


@pytest.mark.parametrize("age", ["forty", "", "nan", "inf"])
def test_non_numeric_age_names_the_row(age):
    df = pd.DataFrame(
        {"id": ["a", "b"], "mask": ["normal"] * 2, "folder_gender": ["male"] * 2, "folder_age": ["40", age]}
    )
    df["folder_age"] = df["folder_age"].replace("", np.nan)
    expect_error(lambda: encode(df, LABELS, train=True), "row 1 (id 'b')", "is not a number", "attributes.age.bins")


def test_bad_probabilities_and_codes():
    good = [np.full((2, 3), 1 / 3), np.full((2, 2), 0.5), np.full((2, 3), 1 / 3)]
    expect_error(lambda: compose_probs(good[:2], LABELS), "2 probability arrays for 3 attributes")
    expect_error(
        lambda: compose_probs([good[0], np.full((2, 2), 0.4), good[2]], LABELS),
        "'gender'",
        "row 0 sums to 0.8",
    )
    expect_error(
        lambda: compose_probs([good[0], good[1], np.full((2, 2), 0.5)], LABELS),
        "'age'",
        "shape (2, 2)",
        "(2, 3)",
    )
    expect_error(lambda: compose_probs({"mask": good[0], "gender": good[1]}, LABELS), "'age' are missing")
    expect_error(lambda: marginals(np.full((1, 17), 1 / 17), LABELS), "shape (1, 17)", "(1, 18)")
    expect_error(lambda: decompose(np.array([0, 18]), LABELS), "0..17")


def test_attribute_f1_is_macro_f1_of_each_marginal():
    scheme = parse_labels(LABELS)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(scheme.n_classes), size=40)
    truth = decompose(rng.integers(0, scheme.n_classes, 40), scheme)
    got = attribute_f1(probs, truth, scheme)
    assert list(got) == scheme.names
    for name, p in marginals(probs, scheme).items():
        assert got[name] == pytest.approx(f1_score(truth[name], p.argmax(1), average="macro", zero_division=0))

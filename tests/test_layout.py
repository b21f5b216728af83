import shutil
from pathlib import Path

import pandas as pd
import pytest
from mask_contest import DISAGREEING, LAYOUT, N_EVAL, PERSONS, STEMS, write_image, write_mask_contest

from comp.data._layout import files_from_ids, read_layout
from comp.errors import CompError


@pytest.fixture
def contest(tmp_path) -> Path:
    return write_mask_contest(tmp_path / "mask")


def layout(**changes) -> dict:
    """The contest layout with some keys changed (None removes a key)."""
    spec = {**LAYOUT, **changes}
    return {k: v for k, v in spec.items() if v is not None}


def expect_error(spec: dict, root: Path, *fragments: str) -> str:
    """Reading ``spec`` fails with a one-line CompError naming every fragment."""
    with pytest.raises(CompError) as info:
        read_layout(spec, root=root)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_contest_expands_each_person_into_seven_photos(contest):
    df = read_layout(LAYOUT, root=contest)
    assert len(df) == len(PERSONS) * len(STEMS)
    assert list(df.columns[:3]) == ["id", "path", "group"]
    assert {
        "csv_id",
        "csv_path",
        "gender",
        "race",
        "age",
        "pid",
        "folder_gender",
        "folder_age",
        "mask",
    } <= set(df.columns)
    paths = [Path(p) for p in df["path"]]
    assert all(p.is_absolute() and p.is_file() for p in paths)
    assert not any(p.name.startswith(".") or p.suffix == ".txt" for p in paths)
    assert {p.suffix for p in paths} == {".jpg", ".jpeg", ".png"}
    assert df["id"].tolist() == sorted(df["id"]) and df["id"].is_unique
    first = df.iloc[0]
    assert first["id"] == f"{first['group']}/{first['mask']}" and Path(first["path"]).parent.name == first["group"]
    assert all(isinstance(v, str) for v in df.drop(columns=["path"]).to_numpy().ravel())
    assert df.equals(read_layout(LAYOUT, root=contest))


def test_groups_are_person_folders_not_ids(contest):
    df = read_layout(LAYOUT, root=contest)
    assert set(df["group"]) == {p[4] for p in PERSONS}
    assert df.groupby("group").size().eq(len(STEMS)).all()
    # the unpadded id '1' belongs to two people, so it spans two groups
    assert df.loc[df["csv_id"] == "1", "group"].nunique() == 2
    suffixed = df[df["csv_id"] == "001498-1"]
    assert len(suffixed) == 7 and set(suffixed["pid"]) == {"001498-1"}


def test_folder_name_and_csv_column_stay_apart_when_they_disagree(contest):
    df = read_layout(LAYOUT, root=contest)
    person = df[df["group"] == DISAGREEING]
    assert set(person["gender"]) == {"female"} and set(person["folder_gender"]) == {"male"}
    agree = df[df["group"] != DISAGREEING]
    assert (agree["gender"] == agree["folder_gender"]).all()


def test_columns_option_lets_the_folder_name_own_a_field_name(contest):
    spec = layout(
        columns=["path"],
        fields={**LAYOUT["fields"], "folder": r"(?P<pid>[^_]+)_(?P<gender>[^_]+)_[^_]+_(?P<age>\d+)"},
    )
    df = read_layout(spec, root=contest)
    assert set(df.loc[df["group"] == DISAGREEING, "gender"]) == {"male"}
    assert "race" not in df.columns and "csv_id" not in df.columns


def test_one_row_per_image_csv(tmp_path):
    ids = ["a1", "NA", "null", "nan", "b[2]", "007"]
    for i, name in enumerate(ids):
        write_image(tmp_path / "train" / f"{name}.png", seed=i)
    write_image(tmp_path / "train" / "unlisted.png", seed=99)
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{name},c{i % 2}\n" for i, name in enumerate(ids)))
    df = read_layout({"csv": "train.csv", "folder": "train", "files": "{id}.png", "id": "{id}"}, root=tmp_path)
    assert sorted(df["id"]) == sorted(ids) and df["id"].tolist() == sorted(ids)
    assert (df["id"] == df["csv_id"]).all() and (df["group"] == df["id"]).all()
    assert all(Path(p).name == f"{i}.png" for i, p in zip(df["id"], df["path"]))
    assert dict(zip(df["id"], df["label"]))["NA"] == "c1"


def test_one_row_per_image_with_a_path_column(tmp_path):
    write_image(tmp_path / "imgs" / "x" / "1.jpg", seed=0)
    write_image(tmp_path / "imgs" / "y" / "1.jpg", seed=1)
    (tmp_path / "train.csv").write_text("file,label,person\nx/1.jpg,a,p1\ny/1.jpg,b,p1\n")
    spec = {"csv": "train.csv", "folder": "imgs", "files": "{file}", "id": "{file}", "group": "{person}"}
    df = read_layout(spec, root=tmp_path)
    assert df["id"].tolist() == ["x/1.jpg", "y/1.jpg"] and df["group"].tolist() == ["p1", "p1"]


def test_any_extension_by_stem_and_a_duplicate_is_named(tmp_path):
    write_image(tmp_path / "train" / "a.jpg", seed=0)
    write_image(tmp_path / "train" / "b.png", seed=1)
    (tmp_path / "train.csv").write_text("id,label\na,x\nb,y\n")
    spec = {"csv": "train.csv", "folder": "train", "files": "{id}.*", "id": "{id}"}
    assert read_layout(spec, root=tmp_path)["path"].map(lambda p: Path(p).name).tolist() == ["a.jpg", "b.png"]
    write_image(tmp_path / "train" / "a.png", seed=2)
    expect_error(spec, tmp_path, "id 'a'", "a.jpg", "a.png")


def test_image_folder_layout(tmp_path):
    for k, name in enumerate(["cat/1.jpg", "cat/2.jpeg", "dog/1.png", "dog/sub/3.png"]):
        write_image(tmp_path / "train" / name, seed=k)
    write_image(tmp_path / "train" / ".ipynb_checkpoints" / "4.png", seed=9)
    (tmp_path / "train" / "dog" / "._1.png").write_bytes(b"\x00")
    df = read_layout({"folder": "train/*", "fields": {"folder": "(?P<label>.+)"}}, root=tmp_path)
    assert df["id"].tolist() == ["train/cat/1.jpg", "train/cat/2.jpeg", "train/dog/1.png"]
    assert df["label"].tolist() == ["cat", "cat", "dog"] and (df["group"] == df["id"]).all()
    deep = read_layout({"folder": "train/*", "files": "**/*", "fields": {"folder": "(?P<label>.+)"}}, root=tmp_path)
    assert "train/dog/sub/3.png" in set(deep["id"])


def test_flat_folder_with_labels_in_file_names(tmp_path):
    for k, name in enumerate(["cat.0.jpg", "cat.1.jpg", "dog.0.jpg"]):
        write_image(tmp_path / "train" / name, seed=k)
    spec = {"folder": "train", "fields": {"stem": r"(?P<label>[a-z]+)\.\d+"}, "id": "{stem}"}
    df = read_layout(spec, root=tmp_path)
    assert df["id"].tolist() == ["cat.0", "cat.1", "dog.0"] and df["label"].tolist() == ["cat", "cat", "dog"]


def test_test_ids_that_carry_their_extension(contest):
    df = files_from_ids("eval/info.csv", id_column="ImageID", image_dir="eval/images", root=contest)
    info = pd.read_csv(contest / "eval" / "info.csv", dtype=str)
    assert df["id"].tolist() == info["ImageID"].tolist() and len(df) == N_EVAL
    assert [Path(p).name for p in df["path"]] == info["ImageID"].tolist()
    assert all(Path(p).is_file() for p in df["path"]) and df["ans"].tolist() == ["0"] * N_EVAL
    with_ext = files_from_ids(
        "eval/info.csv", id_column="ImageID", image_dir="eval/images", image_ext=".jpg", root=contest
    )
    assert with_ext["path"].tolist() == df["path"].tolist()


def test_test_ids_without_extension(tmp_path):
    write_image(tmp_path / "test" / "a.png", seed=0)
    write_image(tmp_path / "test" / "b.jpg", seed=1)
    (tmp_path / "test.csv").write_text("id,path\na,x\nb,y\n")
    df = files_from_ids("test.csv", id_column="id", image_dir="test", root=tmp_path)
    assert [Path(p).name for p in df["path"]] == ["a.png", "b.jpg"] and df["csv_path"].tolist() == ["x", "y"]
    with pytest.raises(CompError, match=r"line 3: image .*b\.png for id 'b' not found"):
        files_from_ids("test.csv", id_column="id", image_dir="test", image_ext=".png", root=tmp_path)


def test_test_id_missing_or_escaping(contest):
    info = contest / "eval" / "info.csv"
    info.write_text(info.read_text() + "ffff.jpg,0\n")
    with pytest.raises(CompError, match=rf"line {N_EVAL + 2}: image .*ffff\.jpg for id 'ffff.jpg' not found"):
        files_from_ids("eval/info.csv", id_column="ImageID", image_dir="eval/images", root=contest)
    info.write_text("ImageID,ans\n../../x.jpg,0\n")
    with pytest.raises(CompError, match="outside the image folder"):
        files_from_ids("eval/info.csv", id_column="ImageID", image_dir="eval/images", root=contest)


def test_missing_person_folder_names_row_line_and_folder(contest):
    shutil.rmtree(contest / "train" / "images" / PERSONS[3][4])
    expect_error(LAYOUT, contest, "train.csv line 5", PERSONS[3][4], "not found")


def test_folder_without_images(contest):
    folder = contest / "train" / "images" / PERSONS[0][4]
    for p in folder.iterdir():
        if not p.name.startswith("."):
            p.unlink()
    expect_error(LAYOUT, contest, "train.csv line 2", "no images", PERSONS[0][4])


def test_wrong_number_of_photos(contest):
    next((contest / "train" / "images" / PERSONS[2][4]).glob("normal.*")).unlink()
    expect_error(LAYOUT, contest, "train.csv line 4", "has 6 images, not 7", "per_folder")


def test_duplicate_id_names_both_files(contest):
    folder = contest / "train" / "images" / PERSONS[1][4]
    write_image(folder / "mask1.png", seed=5)
    write_image(folder / "mask1.jpeg", seed=6)
    expect_error(layout(per_folder=None), contest, f"id '{PERSONS[1][4]}/mask1'", "mask1.jpeg", "mask1.png")


def test_stem_that_does_not_match_is_an_error_or_skipped(contest):
    write_image(contest / "train" / "images" / PERSONS[4][4] / "mask6.jpg", seed=7)
    expect_error(LAYOUT, contest, "mask6.jpg", "fields.stem", "skip_unmatched")
    assert len(read_layout(layout(skip_unmatched=True), root=contest)) == len(PERSONS) * len(STEMS)


def test_folder_that_does_not_match_is_an_error_or_skipped(contest):
    images = contest / "train" / "images"
    (images / PERSONS[5][4]).rename(images / "odd-person")
    csv = contest / "train" / "train.csv"
    csv.write_text(csv.read_text().replace(PERSONS[5][4], "odd-person"))
    expect_error(LAYOUT, contest, "train.csv line 7", "'odd-person'", "fields.folder")
    assert len(read_layout(layout(skip_unmatched=True), root=contest)) == (len(PERSONS) - 1) * len(STEMS)


def test_csv_value_may_not_climb_out(contest):
    csv = contest / "train" / "train.csv"
    csv.write_text(csv.read_text().replace(PERSONS[0][4], "../../elsewhere"))
    expect_error(LAYOUT, contest, "train.csv line 2", "'../../elsewhere'", "..")


def test_empty_cell_used_by_a_template(contest):
    csv = contest / "train" / "train.csv"
    csv.write_text(csv.read_text().replace(PERSONS[2][4], ""))
    expect_error(LAYOUT, contest, "train.csv line 4", "{path} is empty")


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"fodler": "x"}, ("data.layout.fodler", "did you mean 'folder'")),
        ({"folder": None}, ("data.layout.folder", "missing")),
        ({"id": "{person}/{stem}"}, ("data.layout.id", "{person} is no column")),
        ({"id": "{path.upper}"}, ("data.layout.id", "plain column")),
        ({"fields": {"stem": "(?P<mask>mask"}}, ("data.layout.fields.stem", "not a valid regex")),
        ({"fields": {"stem": "mask.*"}}, ("data.layout.fields.stem", "no named group")),
        ({"fields": {"stm": "(?P<m>.*)"}}, ("data.layout.fields.stm", "did you mean 'stem'")),
        ({"fields": {"folder": r"(?P<id>\d+)_(?P<gender>.+)"}}, ("group 'id'", "output column")),
        (
            {"fields": {"folder": r"[^_]+_(?P<gender>[^_]+)_.+"}},
            ("group 'gender'", "column of", "train.csv", "rename"),
        ),
        ({"columns": ["path", "sex"]}, ("column 'sex' not found", "data.layout.columns")),
        ({"per_folder": 0}, ("data.layout.per_folder", "positive integer")),
        ({"csv": "train/nope.csv"}, ("nope.csv", "not found")),
    ],
)
def test_bad_spec_is_a_one_line_error(contest, changes, fragments):
    expect_error(layout(**changes), contest, *fragments)


def test_folder_glob_matching_nothing(tmp_path):
    (tmp_path / "train").mkdir()
    expect_error({"folder": "train/*"}, tmp_path, "data.layout.folder", "'train/*'", "matches no folder")
    expect_error({"folder": "train/{label}"}, tmp_path, "{names}", "no csv")

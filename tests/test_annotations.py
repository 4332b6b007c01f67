"""Every annotation format on small files written here: exact records, labels, class names and
error messages (file and line)."""

import json
import logging
import os

import pytest

from vidadapt.data.annotations import (
    Annotation,
    VideoRecord,
    detect_format,
    load_annotation,
    write_annotation,
)
from vidadapt.errors import DataError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def touch(path):
    return write(path, "")


# --- list and raw-frame lists --------------------------------------------------------------


def test_list_with_spaces_in_paths_and_classes_txt(tmp_path):
    ann = write(tmp_path / "train.txt", "a/x.mp4 1\n\nmy dir/my  video.mp4 0\n")
    write(tmp_path / "classes.txt", "walking\nrunning\n")
    a = load_annotation(ann)
    assert a.records == [
        VideoRecord(str(tmp_path / "a/x.mp4"), 1),
        VideoRecord(str(tmp_path / "my dir/my  video.mp4"), 0),
    ]
    assert a.classes == ["walking", "running"]
    assert a.source == str(ann)


def test_list_without_classes_txt_names_classes_by_index_and_joins_root(tmp_path):
    ann = write(tmp_path / "ann" / "val.txt", "x.mp4 2\n/abs/y.mp4 0\n")
    a = load_annotation(ann, root=tmp_path / "videos")
    assert a.records == [
        VideoRecord(str(tmp_path / "videos" / "x.mp4"), 2),
        VideoRecord("/abs/y.mp4", 0),
    ]
    assert a.classes == ["class_0", "class_1", "class_2"]


def test_given_classes_override_classes_txt(tmp_path):
    ann = write(tmp_path / "val.txt", "x.mp4 1\n")
    write(tmp_path / "classes.txt", "a\nb\n")
    assert load_annotation(ann, classes=["c", "d", "e"]).classes == ["c", "d", "e"]


def test_rawframes_list(tmp_path):
    ann = write(tmp_path / "frames.txt", "clips/v1 32 4\nclips/v 2 17 0\n")
    a = load_annotation(ann)
    assert a.records == [
        VideoRecord(str(tmp_path / "clips/v1"), 4, num_frames=32),
        VideoRecord(str(tmp_path / "clips/v 2"), 0, num_frames=17),
    ]
    assert a.records[0].start_index == 1
    assert len(a.classes) == 5


def test_bad_list_line_names_file_and_line(tmp_path):
    ann = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 zero\n")
    with pytest.raises(DataError) as err:
        load_annotation(ann, format="list")
    assert str(err.value) == f"{ann}:2: expected '<path> <label>', got 'b.mp4 zero'"


def test_bad_rawframes_line(tmp_path):
    ann = write(tmp_path / "f.txt", "dir 10 1\ndir 1\n")
    with pytest.raises(DataError) as err:
        load_annotation(ann, format="rawframes")
    assert str(err.value) == (
        f"{ann}:2: expected '<frame_dir> <total_frames> <label>', got 'dir 1'"
    )


def test_label_out_of_range_of_classes_txt(tmp_path):
    ann = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 1\nc.mp4 2\n")
    write(tmp_path / "classes.txt", "x\ny\n")
    with pytest.raises(DataError) as err:
        load_annotation(ann)
    assert str(err.value) == (
        f"{ann}:3: label 2 is out of range for 2 classes in {tmp_path / 'classes.txt'}"
    )


def test_missing_file():
    with pytest.raises(DataError, match="annotation file /no/such.txt does not exist"):
        load_annotation("/no/such.txt")


def test_write_then_read_back(tmp_path):
    videos = tmp_path / "videos"
    original = Annotation(
        [VideoRecord(str(videos / "a b.mp4"), 1), VideoRecord("/elsewhere/c.mp4", 0)],
        ["sit", "stand"],
        "memory",
    )
    out = tmp_path / "videos" / "clean.txt"
    write_annotation(original, out)
    assert out.read_text() == "a b.mp4 1\n/elsewhere/c.mp4 0\n"
    assert (videos / "classes.txt").read_text() == "sit\nstand\n"
    again = load_annotation(out)
    assert again.records == original.records and again.classes == original.classes

    frames = Annotation([VideoRecord(str(videos / "f1"), 1, num_frames=9)], ["sit", "stand"], "")
    write_annotation(frames, videos / "frames.txt", format="rawframes")
    assert load_annotation(videos / "frames.txt").records == frames.records


def test_write_refuses_to_overwrite_other_classes_txt(tmp_path):
    write(tmp_path / "classes.txt", "other\n")
    with pytest.raises(DataError, match="classes.txt exists with other class names"):
        write_annotation(Annotation([], ["mine"], ""), tmp_path / "x.txt")


# --- Kinetics ----------------------------------------------------------------------------

KINETICS_CSV = (
    "label,youtube_id,time_start,time_end,split\n"
    "riding a bike,abc,10,20,train\n"
    "abseiling,xyz,0,10,train\n"
    "riding a bike,def,5,15,train\n"
)


@pytest.mark.parametrize(
    "class_folder",
    [lambda name: name, lambda name: name.replace(" ", "_"), lambda name: ""],
    ids=["per_class", "underscores", "flat"],
)
def test_kinetics_layouts(tmp_path, class_folder):
    ann = write(tmp_path / "train.csv", KINETICS_CSV)
    videos = tmp_path / "videos"
    touch(videos / class_folder("riding a bike") / "abc_000010_000020.mp4")
    a = load_annotation(ann, root=videos)
    assert a.classes == ["abseiling", "riding a bike"]
    assert a.records == [
        VideoRecord(
            os.path.join(videos, class_folder("riding a bike"), "abc_000010_000020.mp4"), 1
        ),
        VideoRecord(os.path.join(videos, class_folder("abseiling"), "xyz_000000_000010.mp4"), 0),
        VideoRecord(
            os.path.join(videos, class_folder("riding a bike"), "def_000005_000015.mp4"), 1
        ),
    ]


def test_kinetics_shared_classes_and_unknown_label(tmp_path):
    ann = write(tmp_path / "val.csv", KINETICS_CSV)
    classes = ["abseiling", "juggling", "riding a bike"]
    assert [r.label for r in load_annotation(ann, classes=classes).records] == [2, 0, 2]
    with pytest.raises(DataError) as err:
        load_annotation(ann, classes=["abseiling"])
    assert str(err.value) == f"{ann}:2: unknown class 'riding a bike' (not among the 1 classes)"


def test_kinetics_missing_columns(tmp_path):
    ann = write(tmp_path / "k.csv", "label,youtube_id\nx,y\n")
    with pytest.raises(DataError, match="lacks the column.s. time_end, time_start"):
        load_annotation(ann)


# --- Something-Something-v2 --------------------------------------------------------------

SSV2_LABELS = {"Pushing something from left to right": "1", "Holding something": "0"}
SSV2_ITEMS = [
    {"id": "42", "template": "Pushing [something] from left to right", "label": "x"},
    {"id": "7", "template": "Holding [something]", "label": "y"},
]


def test_ssv2(tmp_path):
    ann = write(tmp_path / "something-something-v2-train.json", json.dumps(SSV2_ITEMS))
    write(tmp_path / "something-something-v2-labels.json", json.dumps(SSV2_LABELS))
    a = load_annotation(ann, root="/data/ssv2")
    assert a.records == [VideoRecord("/data/ssv2/42.webm", 1), VideoRecord("/data/ssv2/7.webm", 0)]
    assert a.classes == ["Holding something", "Pushing something from left to right"]


def test_ssv2_unknown_template_and_missing_labels(tmp_path):
    ann = write(tmp_path / "train.json", json.dumps(SSV2_ITEMS))
    with pytest.raises(DataError, match="no labels.json beside it; pass labels=PATH"):
        load_annotation(ann)
    labels = write(tmp_path / "other" / "labels.json", json.dumps({"Holding something": "0"}))
    with pytest.raises(DataError) as err:
        load_annotation(ann, labels=labels)
    assert str(err.value) == (
        f"{ann}: item 0 (id 42): unknown class 'Pushing something from left to right' "
        "(not among the 1 classes)"
    )


# --- HMDB51 and UCF101 -------------------------------------------------------------------


def test_hmdb51_split_files(tmp_path):
    splits = tmp_path / "splits"
    write(splits / "brush_hair_test_split1.txt", "b1.avi 1 \nb2.avi 2 \nb3.avi 0 \n")
    write(splits / "cartwheel_test_split1.txt", "c1.avi 2 \nc2.avi 1 \n")
    write(splits / "cartwheel_test_split2.txt", "c1.avi 1 \nc2.avi 2 \n")
    train = load_annotation(splits, root="/hmdb")
    assert train.classes == ["brush_hair", "cartwheel"]
    assert train.records == [
        VideoRecord("/hmdb/brush_hair/b1.avi", 0),
        VideoRecord("/hmdb/cartwheel/c2.avi", 1),
    ]
    test = load_annotation(splits, root="/hmdb", subset="test")
    assert [r.path for r in test.records] == ["/hmdb/brush_hair/b2.avi", "/hmdb/cartwheel/c1.avi"]
    split2 = load_annotation(splits, root="/hmdb", split=2)
    assert split2.classes == ["cartwheel"]
    assert split2.records == [VideoRecord("/hmdb/cartwheel/c1.avi", 0)]


def test_hmdb51_errors(tmp_path):
    bad = write(tmp_path / "s" / "run_test_split1.txt", "r1.avi 1\nr2.avi 3\n")
    with pytest.raises(DataError, match="pass root"):
        load_annotation(tmp_path / "s")
    with pytest.raises(DataError) as err:
        load_annotation(tmp_path / "s", root="/v")
    assert str(err.value) == f"{bad}:2: expected '<video> 0|1|2', got 'r2.avi 3'"


def test_ucf101_train_and_test_lists(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n")
    write(
        lists / "trainlist01.txt",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\nApplyEyeMakeup/v_A_g08_c01.avi 1\n",
    )
    write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_A_g01_c01.avi\nHandStandPushups/v_HandStandPushups_g01_c01.avi\n",
    )
    train = load_annotation(lists / "trainlist01.txt", root="/ucf")
    assert train.classes == ["ApplyEyeMakeup", "HandstandPushups"]
    assert train.records == [
        VideoRecord("/ucf/HandstandPushups/v_HandStandPushups_g08_c01.avi", 1),
        VideoRecord("/ucf/ApplyEyeMakeup/v_A_g08_c01.avi", 0),
    ]
    test = load_annotation(lists / "testlist01.txt", root="/ucf")
    assert [r.label for r in test.records] == [0, 1]


def test_ucf101_errors(tmp_path):
    lists = tmp_path / "l"
    write(lists / "classInd.txt", "1 A\n2 B\n")
    train = write(lists / "trainlist01.txt", "A/a.avi 1\nB/b.avi 3\n")
    with pytest.raises(DataError) as err:
        load_annotation(train, root="/ucf")
    assert str(err.value) == (
        f"{train}:2: class id 3 is out of range for the 2 classes in {lists / 'classInd.txt'}"
    )
    test = write(lists / "testlist01.txt", "A/a.avi\nC/c.avi\n")
    with pytest.raises(DataError) as err:
        load_annotation(test, root="/ucf")
    assert str(err.value) == f"{test}:2: unknown class 'C' (not in {lists / 'classInd.txt'})"


# --- folder per class and format detection -----------------------------------------------


def test_folder_per_class(tmp_path):
    for rel in ["walk/b.mp4", "walk/a.avi", "walk/notes.txt", "run/x.webm", "empty/.keep"]:
        touch(tmp_path / "tree" / rel)
    a = load_annotation(tmp_path / "tree")
    assert a.classes == ["empty", "run", "walk"]
    tree = str(tmp_path / "tree")
    assert a.records == [
        VideoRecord(os.path.join(tree, "run", "x.webm"), 1),
        VideoRecord(os.path.join(tree, "walk", "a.avi"), 2),
        VideoRecord(os.path.join(tree, "walk", "b.mp4"), 2),
    ]
    with pytest.raises(DataError, match="walk: unknown class 'walk'"):
        load_annotation(tmp_path / "tree", classes=["empty", "run"])


def test_detect_format(tmp_path):
    assert detect_format(write(tmp_path / "a.txt", "x y.mp4 3\n")) == "list"
    assert detect_format(write(tmp_path / "b.txt", "clip 5 3\n")) == "rawframes"
    assert detect_format(write(tmp_path / "c.txt", "clip 5.mp4 3\n")) == "list"
    assert detect_format(write(tmp_path / "d.csv", "label\n")) == "kinetics"
    assert detect_format(write(tmp_path / "e.json", "[]")) == "ssv2"
    assert detect_format(write(tmp_path / "trainlist02.txt", "A/a.avi 1\n")) == "ucf101"
    touch(tmp_path / "splits" / "run_test_split3.txt")
    assert detect_format(tmp_path / "splits") == "hmdb51"
    touch(tmp_path / "tree" / "run" / "a.mp4")
    assert detect_format(tmp_path / "tree") == "folder"
    bad = write(tmp_path / "f.txt", "just-a-path\n")
    with pytest.raises(DataError, match="cannot tell the annotation format of .*f.txt"):
        detect_format(bad)
    with pytest.raises(DataError, match="unknown annotation format 'xml'"):
        load_annotation(bad, format="xml")


def test_kinetics_files_named_by_id_alone_or_with_other_extensions(tmp_path):
    ann = write(tmp_path / "train.csv", KINETICS_CSV)
    flat = tmp_path / "flat"
    for name in ("abc.mkv", "xyz.mp4", "def.webm"):  # yt-dlp names, mixed containers
        touch(flat / name)
    assert [r.path for r in load_annotation(ann, root=flat).records] == [
        str(flat / "abc.mkv"), str(flat / "xyz.mp4"), str(flat / "def.webm")]
    per_class = tmp_path / "per_class"
    touch(per_class / "riding_a_bike" / "abc_000010_000020.webm")
    assert load_annotation(ann, root=per_class).records[0].path == str(
        per_class / "riding_a_bike" / "abc_000010_000020.webm")


def test_ssv2_videos_reencoded_as_mp4(tmp_path):
    ann = write(tmp_path / "something-something-v2-train.json", json.dumps(SSV2_ITEMS))
    write(tmp_path / "something-something-v2-labels.json", json.dumps(SSV2_LABELS))
    touch(tmp_path / "videos" / "42.mp4")
    touch(tmp_path / "videos" / "7.mp4")
    records = load_annotation(ann, root=tmp_path / "videos").records
    assert [r.path for r in records] == [str(tmp_path / "videos" / f"{i}.mp4") for i in (42, 7)]


def test_when_no_video_matches_the_names_tried_are_shown(tmp_path, caplog):
    ann = write(tmp_path / "train.csv", KINETICS_CSV)
    (tmp_path / "videos").mkdir()
    caplog.set_level(logging.WARNING, logger="vidadapt")
    load_annotation(ann, root=tmp_path / "videos")
    (message,) = [r.getMessage() for r in caplog.records]
    videos = tmp_path / "videos"
    assert message.startswith(f"{ann}: none of its 3 videos was found under {videos}")
    for tried in ("riding a bike/abc_000010_000020.*", "riding_a_bike/abc.*", "/abc.*"):
        assert tried in message


def test_a_label_beyond_the_others_without_classes_file_warns(tmp_path, caplog):
    ann = write(tmp_path / "train.txt", "a.mp4 0\nb.mp4 1\nc.mp4 5\n")
    caplog.set_level(logging.WARNING, logger="vidadapt")
    assert len(load_annotation(ann).classes) == 6
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{ann}: the highest label is 5, so 6 classes, but 3 of them "
                              "have no video (e.g. 2, 3, 4); with no classes.txt")

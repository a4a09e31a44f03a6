"""Image folders with files that are not images: refused before a run starts (one line, the
first few named, the count), or left out with skip_unreadable."""
import numpy as np
import pytest
from PIL import Image

from mage_fast.cli import main
from mage_fast.data import ImageFolder


def folder_with(path, good, bad):
    """good 16x16 PNGs per class (cat, dog) and the bad files {relative path: bytes}."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (path / c).mkdir(parents=True)
        for i in range(good):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path / c / f"{i}.png")
    for name, data in bad.items():
        (path / name).write_bytes(data)
    return path


BAD = {"cat/notes.jpg": b"a text file named as an image\n", "dog/empty.png": b"",
       "dog/cut.png": b"\x89PNG\r\n\x1a\n\x00\x00"}   # the signature, then the header cut off


def test_a_folder_with_unreadable_images_is_refused_in_one_line(tmp_path):
    root = folder_with(tmp_path / "data", 3, BAD)
    with pytest.raises(ValueError) as e:
        ImageFolder(str(root))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"3 of the 9 images in {root} cannot be read: ")
    assert "cat/notes.jpg (not an image PIL can read)" in message and "dog/cut.png" in message
    assert message.endswith("remove them, or skip them (--skip-unreadable)")


def test_only_the_first_few_are_named(tmp_path):
    root = folder_with(tmp_path / "data", 1, {f"cat/bad{i}.png": b"x" for i in range(7)})
    with pytest.raises(ValueError, match=r"^7 of the 9 images .*bad2.png \(not an image PIL can read\) and 4 more;"):
        ImageFolder(str(root))


def test_skip_unreadable_leaves_them_out_with_their_labels(tmp_path):
    root = folder_with(tmp_path / "data", 3, BAD)
    ds = ImageFolder(str(root), skip_unreadable=True)
    assert ds.skipped == ["cat/notes.jpg", "dog/cut.png", "dog/empty.png"]
    assert ds.files == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert ds.labels == [0, 0, 0, 1, 1, 1] and ds.classes == ["cat", "dog"]
    assert [ds[i][0].size for i in range(len(ds))] == [(16, 16)] * 6
    assert ImageFolder(str(folder_with(tmp_path / "clean", 2, {}))).skipped == []
    with pytest.raises(ValueError, match="none of the 3 images"):
        ImageFolder(str(folder_with(tmp_path / "all-bad", 0, BAD)), skip_unreadable=True)


def test_train_refuses_the_folder_before_its_first_step(tmp_path, capsys):
    """It stopped at step 6 of 12, where a batch first read the file."""
    root = folder_with(tmp_path / "data", 6, {"dog/notes.jpg": b"not an image"})
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "mage_vit_tiny_test",
              "--batch-size", "2", "--max-steps", "12", "--device", "cpu"])
    assert str(e.value) == (f"mage-fast train: 1 of the 13 images in {root} cannot be read: dog/notes.jpg (not an "
                            "image PIL can read); remove them, or skip them (--skip-unreadable)")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_train_skip_unreadable_trains_on_the_rest_and_counts_them(tmp_path, caplog):
    root = folder_with(tmp_path / "data", 3, {"dog/notes.jpg": b"not an image"})
    main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "mage_vit_tiny_test",
          "--batch-size", "2", "--max-steps", "1", "--device", "cpu", "--skip-unreadable"])
    assert "skipped 1 of the 7 images" in caplog.text and (tmp_path / "run" / "checkpoint-last.pth").exists()

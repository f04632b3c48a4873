import gzip
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from mnist_lab import data
from mnist_lab.config import DataConfig


@pytest.fixture
def copy_of_mnist(tmp_path, mnist_dir):
    for f in mnist_dir.glob("*-ubyte.gz"):
        shutil.copy(f, tmp_path / f.name)
    data.load_mnist.cache_clear()
    yield tmp_path
    data.load_mnist.cache_clear()


def test_real_mnist_loads_with_its_checksums(mnist_dir):
    arrays, digest = data.load_mnist(mnist_dir)
    assert arrays["train-images-idx3-ubyte"].shape == (60000, 28, 28)
    assert arrays["t10k-labels-idx1-ubyte"][:4].tolist() == [7, 2, 1, 0]
    assert digest.startswith("sha256:")


def test_uncompressed_files_load_too(copy_of_mnist):
    for gz in copy_of_mnist.glob("*.gz"):
        (copy_of_mnist / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    arrays, _ = data.load_mnist(copy_of_mnist)
    assert arrays["train-labels-idx1-ubyte"].shape == (60000,)


def test_validation_is_held_out_of_training_stratified_and_seeded(mnist_dir):
    split = data.load_split(DataConfig(), mnist_dir)
    assert len(split.x_train) == 55000 and len(split.x_val) == 5000
    counts = np.bincount(split.y_val, minlength=10) / 5000
    overall = np.bincount(np.concatenate([split.y_train, split.y_val]), minlength=10) / 60000
    assert np.abs(counts - overall).max() < 0.002  # stratified: class shares match the training set
    # Disjoint: no validation image is also a training image (compare raw bytes).
    train_rows = {row.tobytes() for row in split.x_train[:20000]}
    assert not any(img.tobytes() in train_rows for img in split.x_val[:500])
    again = data.load_split(DataConfig(), mnist_dir)
    assert np.array_equal(again.y_val, split.y_val)
    other = data.load_split(DataConfig(seed=1), mnist_dir)
    assert not np.array_equal(other.y_val, split.y_val)


def test_train_size_and_fraction(mnist_dir):
    split = data.load_split(DataConfig(train_size=2000, validation_size=0.3), mnist_dir)
    assert len(split.x_train) == 2000 and len(split.x_val) == 18000
    assert np.bincount(split.y_train, minlength=10).min() > 150  # every digit present


def break_file(folder, name, how):
    path = folder / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "altered":
        raw = raw[:-1] + bytes([(raw[-1] + 1) % 256])
    elif how == "magic":
        raw = b"\x00\x00\x08\x01" + raw[4:]
    path.write_bytes(gzip.compress(raw, compresslevel=1))  # level 9 costs 10 s on 47 MB; the content is what matters
    return path


@pytest.mark.parametrize(
    "how, expected",
    [("truncated", "truncated"), ("altered", "differs from the original MNIST"), ("magic", "bad IDX magic")],
)
def test_corrupt_files_get_one_line_errors_naming_the_file(copy_of_mnist, how, expected):
    path = break_file(copy_of_mnist, "train-images-idx3-ubyte", how)
    with pytest.raises(data.DataError) as e:
        data.load_mnist(copy_of_mnist)
    assert str(path) in str(e.value) and expected in str(e.value) and "\n" not in str(e.value)


def test_missing_and_undecompressable_files(copy_of_mnist):
    (copy_of_mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*missing"):
        data.load_mnist(copy_of_mnist)
    (copy_of_mnist / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    data.load_mnist.cache_clear()
    with pytest.raises(data.DataError, match="cannot be decompressed"):
        data.load_mnist(copy_of_mnist)


def test_parse_idx_shape_and_header_checks():
    good = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert data.parse_idx(good, "x", (3,)).tolist() == [1, 2, 3]
    with pytest.raises(data.DataError, match="shape"):
        data.parse_idx(good, "x", (4,))
    with pytest.raises(data.DataError, match="header"):
        data.parse_idx(good[:6], "x", (3,))
    with pytest.raises(data.DataError, match="trailing"):
        data.parse_idx(good + b"\x00", "x", (3,))


def test_without_a_folder_it_downloads_or_says_to_set_mnist_lab_data(tmp_path):
    # In a fresh process, with KERAS_HOME set before Keras reads it: no cached copy can stand in for
    # the download (set in this process, after Keras was imported, it changed nothing).
    probe = ("import sys\nfrom mnist_lab import data\ntry:\n    print(data.load_mnist(None)[1])\n"
             "except data.DataError as e:\n    print('offline:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_LAB_DATA"} | {"KERAS_HOME": str(tmp_path / "keras")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         timeout=300).stdout.strip().splitlines()[-1]  # after Keras' "Downloading data from ..."
    assert not any((tmp_path / "keras").rglob("mnist.npz")) or not out.startswith("offline")
    if out.startswith("offline:"):  # offline, as on CI: one line that says what to do
        assert "MNIST_LAB_DATA" in out and "\n" not in out
    else:  # online: the download must be the same MNIST, fetched into the empty KERAS_HOME
        assert out == data.load_mnist(data.data_dir())[1] and any((tmp_path / "keras").rglob("mnist.npz"))


def test_batches_reshuffle_training_every_epoch_and_keep_validation_in_order(mnist_dir):
    """The input pipeline `fit` reads: every image once per epoch with its own label, training in a new
    order each epoch (the same orders for the same seed), validation in the order given."""
    split = data.load_split(DataConfig(train_size=1000, validation_size=300), mnist_dir)
    x, y = data.to_model_input(split.x_train), split.y_train

    def epochs(dataset, n):
        return [[(bx.numpy(), by.numpy()) for bx, by in dataset] for _ in range(n)]

    def pairs(images, labels):
        return Counter(zip((image.tobytes() for image in images), labels.tolist()))

    training = epochs(data.batches(x, y, 64, shuffle_seed=3), 2)
    for epoch in training:
        assert [len(by) for _, by in epoch] == [64] * 15 + [40]
        # Every image once, with its own label.
        assert sum((pairs(bx, by) for bx, by in epoch), Counter()) == pairs(x, y)
    first, second = (np.concatenate([by for _, by in epoch]) for epoch in training)
    assert not np.array_equal(first, second) and not np.array_equal(first, y)
    again = np.concatenate([by for _, by in epochs(data.batches(x, y, 64, shuffle_seed=3), 1)[0]])
    assert np.array_equal(again, first)
    validation = np.concatenate([by for _, by in epochs(data.batches(data.to_model_input(split.x_val), split.y_val, 64), 1)[0]])
    assert np.array_equal(validation, split.y_val)

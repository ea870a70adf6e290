"""The tfds path, offline, through tfds.testing.mock_data (needs tensorflow: the tfds extra)."""

import subprocess
import sys
import textwrap

import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed (pip install 'jaxlab[tfds]')")


def test_load_tfds_with_mock_data():
    pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install 'jaxlab[tfds]')")
    # a subprocess keeps TensorFlow's threads and memory out of the test worker
    code = textwrap.dedent("""
        import numpy as np, tensorflow_datasets as tfds
        from jaxlab.data import load_dataset, make_federated
        with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
            x, y, c = load_dataset("fashion_mnist")
        assert x.shape == (80, 28, 28, 1) and x.dtype == np.float32, x.shape
        assert c == 10 and y.dtype == np.int32 and -1.0 <= x.min() and x.max() <= 1.0
        fd = make_federated(x, y, 2, "iid", balance=True, seed=0, num_classes=c)
        assert int(fd.train_n.sum() + fd.test_n.sum()) == 80
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_offline_error_names_the_fix(tmp_path):
    from jaxlab.data import load_tfds

    with pytest.raises(RuntimeError, match="offline"):
        load_tfds("mnist", data_dir=str(tmp_path), download=False)

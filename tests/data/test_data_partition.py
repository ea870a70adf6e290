import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.data import load_digits, load_pfllib_dir, make_federated, partition, class_histogram, load_dataset
from jaxlab.data.partition import least_samples, train_test_split_clients


def _labels(n, c, seed):
    return np.random.default_rng(seed).integers(0, c, n)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(200, 800), c=st.integers(2, 10), clients=st.integers(2, 8),
       scheme=st.sampled_from(["iid", "pat", "dir", "exdir"]), seed=st.integers(0, 10_000))
def test_every_sample_lands_in_exactly_one_client(n, c, clients, scheme, seed):
    y = _labels(n, c, seed)
    k = min(c, max(2, -(-c // clients)))  # exdir needs clients * k >= c (else a clear ValueError)
    try:
        parts = partition(y, clients, scheme, alpha=0.5, class_per_client=k, seed=seed, num_classes=c)
    except ValueError as e:
        # the unbalanced iid/pat split refuses a class whose share per client is below the floor of
        # least_samples / classes (PFLlib would fail in randint); the refusal must be justified
        assert scheme in ("iid", "pat") and "too few for an unbalanced split" in str(e), e
        least = least_samples(n, clients, 10, 0.75)
        assert min(np.bincount(y, minlength=c)) // clients <= int(least / c), e
        return
    allidx = np.concatenate(parts)
    assert len(parts) == clients
    if scheme in ("iid", "dir"):
        assert sorted(allidx.tolist()) == list(range(n))  # a partition of all samples
    else:
        assert len(np.unique(allidx)) == len(allidx)  # never duplicated
    again = partition(y, clients, scheme, alpha=0.5, class_per_client=k, seed=seed, num_classes=c)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _mean_max_class_share(y, alpha, seed):
    parts = partition(y, 10, "dir", alpha=alpha, seed=seed)
    shares = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    return float(np.mean(shares))


def test_class_skew_grows_as_alpha_shrinks():
    y = np.asarray(load_digits(8)[1])
    skew = [np.mean([_mean_max_class_share(y, a, s) for s in range(3)]) for a in (100.0, 1.0, 0.1)]
    assert skew[0] < skew[1] < skew[2]
    assert skew[0] < 0.2 and skew[2] > 0.5


def test_pat_gives_each_client_at_most_k_classes():
    y = np.asarray(load_digits(8)[1])
    parts = partition(y, 20, "pat", class_per_client=2, seed=3)
    assert max(len(np.unique(y[p])) for p in parts) <= 2


def test_reproduces_pfllib_files_bit_for_bit(pfllib_digits_dir):
    x, y = load_digits(28)
    ours = make_federated(np.array(x), np.array(y), 20, "dir", alpha=0.1, seed=1)
    ref = load_pfllib_dir(str(pfllib_digits_dir))
    assert np.array_equal(ours.train_n, ref.train_n) and np.array_equal(ours.test_n, ref.test_n)
    assert np.array_equal(ours.train_y, ref.train_y) and np.array_equal(ours.test_y, ref.test_y)
    np.testing.assert_allclose(ours.train_x, ref.train_x, atol=1e-6)
    assert ref.input_shape == (28, 28, 1) and ref.num_clients == 20
    assert int(ref.train_n.sum()) == 1340 and int(ref.test_n.sum()) == 457


def test_split_is_75_25_like_sklearn():
    idx = [np.arange(10), np.arange(10, 17)]
    tr, te = train_test_split_clients(idx, 0.75, 0)
    assert [len(t) for t in te] == [3, 2] and [len(t) for t in tr] == [7, 5]
    assert sorted(np.concatenate(tr + te).tolist()) == list(range(17))


def test_histogram_counts_all_samples():
    x, y = load_digits(8)
    fd = make_federated(np.array(x), np.array(y), 5, "dir", alpha=1.0, seed=0)
    assert class_histogram(fd).sum() == 1797


@pytest.mark.parametrize("kwargs,match", [
    (dict(scheme="nope"), "unknown partition scheme"),
    (dict(scheme="dir", alpha=0.0), "alpha"),
    (dict(scheme="dir", alpha=-1.0), "alpha"),
    (dict(scheme="pat", class_per_client=11), "class_per_client"),
    (dict(scheme="iid", num_clients=5000), "more than"),
    (dict(scheme="exdir", num_clients=4, class_per_client=2), "cannot cover all 10 classes"),
])
def test_bad_partition_input(kwargs, match):
    y = np.asarray(load_digits(8)[1])
    kw = dict(num_clients=10) | kwargs
    with pytest.raises(ValueError, match=match):
        partition(y, kw.pop("num_clients"), kw.pop("scheme"), **kw)


def test_unknown_dataset_and_missing_pfllib_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet42")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pfllib_dir(str(tmp_path))

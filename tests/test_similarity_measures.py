"""Properties every correct implementation of the similarity measures has."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.analysis.similarity import cosine, distance_correlation, linear_cka, mutual_knn

RNG = np.random.default_rng(0)


def _rand(n=60, d=12):
    return RNG.standard_normal((n, d))


def _orthogonal(d):
    q, _ = np.linalg.qr(RNG.standard_normal((d, d)))
    return q


@pytest.mark.parametrize("fn", [cosine, linear_cka, mutual_knn, distance_correlation,
                                lambda x, y: linear_cka(x, y, unbiased=True)])
def test_identical_inputs_score_one(fn):
    x = _rand()
    assert fn(x, x) == pytest.approx(1.0, abs=1e-9)
    assert fn(torch.from_numpy(x).float(), torch.from_numpy(x).float()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(unbiased):
    x, y = _rand(80, 10), _rand(80, 14)
    base = linear_cka(x, y, unbiased=unbiased)
    assert linear_cka(x @ _orthogonal(10), y, unbiased=unbiased) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, 7.5 * y @ _orthogonal(14), unbiased=unbiased) == pytest.approx(base, abs=1e-9)
    # but not invariant to an arbitrary (non-orthogonal) linear map
    m = np.diag(np.r_[10.0, np.ones(9)])
    assert linear_cka(x @ m, y, unbiased=unbiased) != pytest.approx(base, abs=1e-3)


def test_cka_gram_and_feature_routes_agree():
    x, y = _rand(20, 50), _rand(20, 40)  # n < d: Gram route
    k = (x - x.mean(0)) @ (x - x.mean(0)).T
    l = (y - y.mean(0)) @ (y - y.mean(0)).T
    expected = (k * l).sum() / np.sqrt((k * k).sum() * (l * l).sum())
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    xs, ys = _rand(200, 5), _rand(200, 3)  # n > d: feature route
    xc, yc = xs - xs.mean(0), ys - ys.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(xs, ys) == pytest.approx(expected, rel=1e-10)


def test_unbiased_cka_near_zero_for_independent_features():
    x, y = _rand(400, 20), _rand(400, 20)
    assert abs(linear_cka(x, y, unbiased=True)) < 0.03
    assert linear_cka(x, y) > linear_cka(x, y, unbiased=True)  # the biased estimator is inflated


def test_distance_correlation_independent_and_linear():
    x, y = _rand(500, 3), _rand(500, 3)
    assert distance_correlation(x, y) < 0.15
    assert distance_correlation(x, 3.0 * x @ _orthogonal(3) + 5.0) == pytest.approx(1.0, abs=1e-9)
    # a non-linear dependence that correlation misses, distance correlation sees
    t = RNG.uniform(-1, 1, (500, 1))
    assert distance_correlation(t, t ** 2) > 0.3


def test_distance_correlation_closed_form_two_points():
    # with two samples every double-centred distance matrix is +-d/2: dCor = 1 whatever the values
    assert distance_correlation([[0.0], [1.0]], [[5.0], [2.0]]) == pytest.approx(1.0)


def test_cosine_closed_form_and_errors():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 1.0], [0.0, -1.0]])
    assert cosine(x, y) == pytest.approx((1 / np.sqrt(2) - 1) / 2)
    with pytest.raises(ValueError, match="equal widths"):
        cosine(x, np.ones((2, 3)))
    with pytest.raises(ValueError, match="same number of samples"):
        linear_cka(x, np.ones((3, 2)))


def test_mutual_knn_closed_form():
    # 4 points on a line; in y the order of the last two is swapped
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([[1.0], [2.0], [4.0], [3.0]])
    # inner-product neighbours (k=1): x: 0->3, 1->3, 2->3, 3->2 ; y: 0->2, 1->2, 2->3, 3->2
    assert mutual_knn(x, y, k=1) == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="k must"):
        mutual_knn(x, y, k=4)


def test_mutual_knn_random_is_near_chance():
    x, y = _rand(300, 16), _rand(300, 16)
    assert mutual_knn(x, y, k=10) < 0.1  # chance is k / (n - 1) = 0.033

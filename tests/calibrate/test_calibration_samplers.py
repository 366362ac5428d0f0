"""Calibration samplers on a hand-built CacheIndex: the repeat-factor sampler's image distribution."""

import math

import numpy as np
import pytest

from simcal.calibrate.samplers import CacheIndex, build_sampler

# image -> its foreground classes (1..4); image 9 holds background only
IMAGE_CLASSES = [[1, 2, 4], [1, 2], [1, 3], [1, 4], [1, 4], [1, 4], [1], [1], [1], []]
BG_PER_IMAGE = 2
T = 0.5


def _index(image_classes, num_classes=4, bg_per_image=BG_PER_IMAGE) -> CacheIndex:
    """Rows image by image: one foreground row per class of the image, then ``bg_per_image`` background rows."""
    labels, ptr = [], [0]
    for classes in image_classes:
        labels += list(classes) + [0] * bg_per_image
        ptr.append(len(labels))
    labels = np.array(labels, dtype=np.int64)
    image_of_row = np.repeat(np.arange(len(image_classes)), np.diff(ptr))
    class_rows = np.concatenate([np.nonzero(labels == c)[0] for c in range(num_classes + 1)])
    class_row_ptr = np.concatenate([[0], np.cumsum([(labels == c).sum() for c in range(num_classes + 1)])])
    per_class_images = [np.unique(image_of_row[labels == c]) for c in range(num_classes + 1)]
    class_images = np.concatenate(per_class_images)
    class_image_ptr = np.concatenate([[0], np.cumsum([len(x) for x in per_class_images])])
    return CacheIndex(labels, np.array(ptr), class_row_ptr, class_rows, class_image_ptr, class_images)


def _expected_probabilities(image_classes, t):
    """LVIS repeat factors by hand: f_c = share of images holding c, r_i = max_c max(1, sqrt(t / f_c))."""
    n = len(image_classes)
    f = {c: sum(c in cl for cl in image_classes) / n for cl in image_classes for c in cl}
    r = np.array([max([1.0] + [max(1.0, math.sqrt(t / f[c])) for c in cl]) for cl in image_classes])
    return r / r.sum()


def _within(counts, p, n, k=4.0):
    """Every image's count within k binomial standard errors of n * p."""
    return bool(np.all(np.abs(counts - n * p) <= k * np.sqrt(n * p * (1 - p))))


def test_hand_built_index_is_consistent():
    idx = _index(IMAGE_CLASSES)
    assert idx.num_images == 10 and idx.num_classes == 4
    assert idx.classes_with_rows().tolist() == [1, 2, 3, 4]
    assert idx.images_of_class(4).tolist() == [0, 3, 4, 5] and idx.images_of_class(3).tolist() == [2]
    assert idx.labels[idx.rows_of_class(2)].tolist() == [2, 2]
    rows, _ = idx.rows_of_images(np.array([9]))
    assert idx.labels[rows].tolist() == [0] * BG_PER_IMAGE


def test_repeat_factor_sampler_draws_images_in_proportion_to_their_repeat_factor():
    idx = _index(IMAGE_CLASSES)
    p = _expected_probabilities(IMAGE_CLASSES, T)
    # r: image 2 (class 3 alone, f = 0.1) sqrt(5); images 0, 1 (class 2, f = 0.2) sqrt(2.5) -- the max over
    # their classes, not a sum or product with class 4's sqrt(1.25); images 3-5 sqrt(1.25); the rest 1.
    r = np.array([math.sqrt(2.5)] * 2 + [math.sqrt(5)] + [math.sqrt(1.25)] * 3 + [1.0] * 4)
    assert np.allclose(p, r / r.sum())
    s = build_sampler("repeat_factor", idx, t=T, seed=0, classes_per_batch=1)
    n = 8_000
    counts = np.zeros(idx.num_images)
    for k in range(n):
        b = s.sample()
        assert len(b.images) == 1  # one image per batch: counts are draws
        i = int(b.images[0])
        counts[i] += 1
        if k < 1000:  # the batch: all that image's foreground rows, its background rows at bg_ratio 1
            fg = idx.labels[b.rows] > 0
            assert np.all((b.rows >= idx.image_row_ptr[i]) & (b.rows < idx.image_row_ptr[i + 1]))
            assert b.num_fg == fg.sum() == len(IMAGE_CLASSES[i])
            assert (~fg).sum() == min(BG_PER_IMAGE, len(IMAGE_CLASSES[i]))
    assert _within(counts, p, n)  # each image within 4 standard errors
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 27.88  # chi-square, 9 degrees of freedom, p = 0.001
    # The check has power: it rejects uniform draws, and these counts are not uniform.
    uniform = np.full(idx.num_images, 1 / idx.num_images)
    assert not _within(counts, uniform, n)
    uniform_counts = np.bincount(np.random.default_rng(0).integers(0, idx.num_images, n), minlength=idx.num_images)
    assert not _within(uniform_counts, p, n)
    # and the rare-class image is drawn most, about sqrt(5) times as often as a common-only one
    assert counts.argmax() == 2 and counts[2] / counts[6:].mean() == pytest.approx(math.sqrt(5), rel=0.1)


def test_repeat_factor_sampler_is_seeded():
    idx = _index(IMAGE_CLASSES)

    def draws(seed):
        s = build_sampler("repeat_factor", idx, t=T, seed=seed, classes_per_batch=4)
        return [s.sample().rows.tolist() for _ in range(50)]

    assert draws(1) == draws(1) and draws(1) != draws(2)

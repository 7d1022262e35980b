"""The synthetic style domains are deterministic, keep the image's shape and change it visibly."""
import numpy as np
import pytest

from artchain.plugins.gan.synthetic import STYLES, load_photos


@pytest.mark.parametrize("style", sorted(STYLES))
def test_style_transform_is_deterministic_and_visible(style):
    photo = load_photos()["chelsea"][::4, ::4]
    first = STYLES[style](photo, np.random.default_rng(3))
    second = STYLES[style](photo, np.random.default_rng(3))
    assert first.shape == photo.shape
    assert 0 <= first.min() and first.max() <= 1
    assert np.array_equal(first, second)
    assert np.abs(first - photo).mean() > 0.05

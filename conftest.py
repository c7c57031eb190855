"""The test tiers (``make test-fast``): which tests are ``slow``, decided in one place.

``slow``: every docs page run (marker ``docs``), the notebooks, and every test that loads real weights (the offline
SmolLM2-135M or the reference VLM, through a fixture or in a file that is about them). The fast tier,
``pytest -m "not slow"``, is the unit tests on tiny random models; ``make test`` still runs everything.
"""

import pytest

#: Files whose every test loads real weights or runs notebooks.
SLOW_FILES = {"test_notebooks.py", "test_real_smollm2.py", "test_reference.py"}
#: Fixtures that load real weights.
SLOW_FIXTURES = {"smollm2", "reference_model"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.name in SLOW_FILES or item.get_closest_marker("docs") or fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)

"""The version of tv_lens (a leaf: the tables of a run record it without importing the whole package)."""

__version__ = "0.1.0"

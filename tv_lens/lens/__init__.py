"""Logit lens (a package; the modules are split out in the next step). Every name stays at ``tv_lens.lens``."""

from .phases import *  # noqa: F401,F403
from .phases import __all__  # noqa: F401

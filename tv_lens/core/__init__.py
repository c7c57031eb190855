"""The hooked model's parts, one job per module: ``sites`` (the hook-site table and its bridges), ``blocks`` (the
hook-point tree and per-block weight views), ``hookapi`` (names and attaching hooks), ``inputs`` (the one input
path), ``tokens`` (token helpers), ``weights`` (cfg and TransformerLens-shaped weights), ``running`` (forward,
caches, generation)."""

from .sites import SITES, Site, site_table_markdown

__all__ = ["SITES", "Site", "site_table_markdown"]

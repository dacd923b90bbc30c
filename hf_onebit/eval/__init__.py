"""Evaluation: perplexity, size, and the held-out English sets every reported quality figure is measured on.

* :mod:`~hf_onebit.eval.metrics`: perplexity over token windows, bits per weight, size on disk, tables.
* :mod:`~hf_onebit.eval.corpora`: the held-out texts (four kinds of English, each split into a *validation* part for
  choosing settings and a *test* part for reporting), built offline from pinned package files.
* :mod:`~hf_onebit.eval.heldout`: per-domain perplexity and their geometric mean on one split.
"""

from .corpora import DOMAINS, SPLITS, heldout_text
from .heldout import (DomainResult, HeldoutReport, evaluate_heldout, evaluate_heldout_cached, heldout_seconds,
                      heldout_windows)
from .metrics import SizeReport, format_table, perplexity, perplexity_ids, size_on_disk, size_report, window_nll

__all__ = ["SizeReport", "format_table", "perplexity", "perplexity_ids", "size_on_disk", "size_report", "window_nll",
           "DOMAINS", "SPLITS", "heldout_text", "DomainResult", "HeldoutReport", "evaluate_heldout", "evaluate_heldout_cached",
           "heldout_seconds", "heldout_windows"]

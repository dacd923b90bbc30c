"""Perplexity on the held-out sets: one figure per domain and their geometric mean, on one split.

    report = evaluate_heldout(model, tokenizer, split="test")
    print(report.table())            # per-domain perplexity, tokens, windows, geometric mean
    report.geomean                   # the one number to compare models by
    heldout_seconds(model, tokenizer, split="test")   # what that evaluation takes on this machine, from one window

Each domain's split is tokenized as one stream and cut into non-overlapping windows of ``seq_len`` tokens (512 by
default; the last partial window is dropped, at most ``max_windows`` windows are used: :data:`DEFAULT_WINDOWS`); the
domain's perplexity is ``exp`` of the mean next-token loss over all predicted tokens of its windows. Choose settings
on ``split="val"``; report ``split="test"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .corpora import DOMAINS, SPLITS, VERSION, heldout_text
from .metrics import format_table, window_nll

#: Windows per domain used by default: enough text for a stable figure, few enough to evaluate in minutes on a CPU.
DEFAULT_WINDOWS = {"val": 8, "test": 16}


@dataclass
class DomainResult:
    domain: str
    ppl: float
    tokens: int  # predicted tokens
    windows: int


@dataclass
class HeldoutReport:
    split: str
    seq_len: int
    domains: dict[str, DomainResult] = field(default_factory=dict)

    @property
    def geomean(self) -> float:
        """Geometric mean of the per-domain perplexities."""
        values = [r.ppl for r in self.domains.values()]
        return math.exp(sum(math.log(v) for v in values) / len(values))

    def ratios(self, teacher: "HeldoutReport") -> dict[str, float]:
        """Per-domain perplexity divided by ``teacher``'s, plus ``"geomean"``."""
        out = {d: r.ppl / teacher.domains[d].ppl for d, r in self.domains.items() if d in teacher.domains}
        out["geomean"] = self.geomean / teacher.geomean
        return out

    def to_dict(self) -> dict:
        return {"split": self.split, "seq_len": self.seq_len, "version": VERSION, "geomean": self.geomean,
                "domains": {d: vars(r) for d, r in self.domains.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "HeldoutReport":
        data = dict(data)
        report = cls(data["split"], data["seq_len"])
        report.domains = {d: DomainResult(**r) for d, r in data["domains"].items()}
        return report

    def table(self, teacher: "HeldoutReport | None" = None) -> str:
        ratios = self.ratios(teacher) if teacher else {}
        headers = ["domain", "perplexity", "tokens", "windows"] + (["x teacher"] if teacher else [])
        rows = [[r.domain, r.ppl, r.tokens, r.windows] + ([ratios[d]] if teacher else [])
                for d, r in self.domains.items()]
        rows.append(["geometric mean", self.geomean, sum(r.tokens for r in self.domains.values()),
                     sum(r.windows for r in self.domains.values())] + ([ratios["geomean"]] if teacher else []))
        return format_table(headers, rows)


def heldout_windows(tokenizer, split: str = "test", seq_len: int = 512, max_windows: int | None = None,
                    domains=DOMAINS) -> dict[str, torch.Tensor]:
    """``{domain: ids}`` with ``ids`` of shape ``(windows, seq_len)``: the token windows :func:`evaluate_heldout` uses."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}; allowed: one of {SPLITS}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len: got {seq_len!r}; allowed: an integer >= 2")
    limit = DEFAULT_WINDOWS[split] if max_windows is None else max_windows
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_windows: got {max_windows!r}; allowed: an integer >= 1")
    out = {}
    for domain in domains:
        ids = tokenizer(heldout_text(domain, split), return_tensors="pt").input_ids[0]
        n = min(limit, ids.numel() // seq_len)
        if n < 1:
            raise ValueError(f"held-out {domain}/{split} has {ids.numel()} tokens, fewer than one window of {seq_len}")
        out[domain] = ids[: n * seq_len].view(n, seq_len)
    return out


@torch.no_grad()
def evaluate_heldout(model, tokenizer, split: str = "test", seq_len: int = 512, max_windows: int | None = None,
                     domains=DOMAINS, progress: bool = False) -> HeldoutReport:
    """Per-domain perplexity of ``model`` on the ``split`` of the held-out sets (see the module docstring)."""
    windows = heldout_windows(tokenizer, split, seq_len, max_windows, domains)
    report = HeldoutReport(split, seq_len)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(w.shape[0] for w in windows.values()), desc=f"held-out {split}", unit="window")
    for domain, ids in windows.items():
        nll, count = window_nll(model, ids, on_window=bar.update if bar is not None else None)
        report.domains[domain] = DomainResult(domain, math.exp(nll / count), count, ids.shape[0])
    if bar is not None:
        bar.close()
    return report


#: timed windows of :func:`heldout_seconds` (after one warm-up window)
TIMED_WINDOWS = 2


def heldout_seconds(model, tokenizer, split: str = "test", seq_len: int = 512, max_windows: int | None = None,
                    domains=DOMAINS) -> float:
    """Seconds :func:`evaluate_heldout` would take for ``model`` on this machine, measured without scoring the split:
    its first window runs once to warm up (kernel loading, the allocator), then ``TIMED_WINDOWS`` times timed, and the
    fastest of those is scaled to the split's window count (every window has the same length, so each costs the same;
    a run over many windows settles at about its fastest call, and a single timed call measured up to ~1.2x slower)."""
    windows = heldout_windows(tokenizer, split, seq_len, max_windows, domains)
    first = next(iter(windows.values()))[:1]
    window_nll(model, first)
    times = []
    for _ in range(TIMED_WINDOWS):
        start = time.perf_counter()
        window_nll(model, first)
        times.append(time.perf_counter() - start)
    return min(times) * sum(w.shape[0] for w in windows.values())


def evaluate_heldout_cached(model, tokenizer, split: str = "test", seq_len: int = 512,
                            max_windows: int | None = None, progress: bool = False,
                            cache_dir: str | None = None) -> HeldoutReport:
    """:func:`evaluate_heldout` for a model that does not change (a teacher), its report kept in
    ``<cache>/heldout/reports/`` keyed by the model's fingerprint (config + weight checksums) and every setting."""
    import hashlib
    import json
    import os

    from ..files.registry import cache_root, file_lock
    from ..training.data import model_fingerprint

    key = hashlib.sha256(json.dumps([model_fingerprint(model), split, seq_len, max_windows, VERSION,
                                     len(tokenizer)]).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir or cache_root(), "heldout", "reports", f"{key}.json")
    with file_lock(path + ".lock"):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return HeldoutReport.from_dict(json.load(fh))
        report = evaluate_heldout(model, tokenizer, split, seq_len, max_windows, progress=progress)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh)
        os.replace(path + ".tmp", path)
    return report

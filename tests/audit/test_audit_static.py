"""The static scan's rules on small snippets (no compilation): what it must flag, and the
idioms of compile-clean code it must leave alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from llmlab.audit.coverage import Coverage, record
from llmlab.audit.static import scan

HEADER = "import torch\nfrom torch import nn\nSTATS = []\n\nclass M(nn.Module):\n    def __init__(self):\n" \
         "        super().__init__()\n        self.lin = nn.Linear(4, 4)\n        self.past = None\n"


def findings(tmp_path: Path, forward_body: str, *args: torch.Tensor, calls: int = 1) -> set[tuple[str, str]]:
    """(hazard, stripped source line) for a module whose forward(self, x, pos) is forward_body."""
    path = tmp_path / "snippet.py"
    body = "\n".join("        " + line for line in forward_body.strip().splitlines())
    path.write_text(HEADER + "\n    def forward(self, x, pos=None):\n" + body + "\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    cov, model = Coverage(), module.M()
    with torch.no_grad():
        for _ in range(calls):
            record(cov, model, *args)
    lines = path.read_text().splitlines()
    return {(f.hazard, lines[f.line - 1].strip()) for f in scan(cov, set())}


X, POS = torch.randn(2, 4), torch.tensor([3])


def test_flags_host_reads_masks_branches_and_state(tmp_path: Path) -> None:
    found = findings(tmp_path, """
y = self.lin(x)
n = y.sum().item()
rows = y.tolist()
keep = y > 0
z = y[keep]
idx = torch.nonzero(y)
if y.max() > 1:
    y = y * 2
p = int(pos)
print(n)
STATS.append(n)
return y
""", X, POS)
    assert {("item", "n = y.sum().item()"), ("tolist", "rows = y.tolist()"), ("data-dependent-shape", "z = y[keep]"),
            ("data-dependent-shape", "idx = torch.nonzero(y)"), ("tensor-branch", "if y.max() > 1:"),
            ("int-position", "p = int(pos)"), ("print-log", "print(n)"), ("global-state", "STATS.append(n)")} <= found


def test_flags_selection_by_a_mask_made_from_a_mask(tmp_path: Path) -> None:
    assert findings(tmp_path, """
keep = x > 0
drop = ~keep
y = x[drop]
return y.sum()
""", X) == {("data-dependent-shape", "y = x[drop]")}


def test_flags_a_cache_grown_by_cat_once_the_line_runs(tmp_path: Path) -> None:
    body = """
k = self.lin(x)
if self.past is not None:
    k = torch.cat([self.past, k], dim=0)
self.past = k
return k
"""
    assert findings(tmp_path, body, X) == set()  # one call: the cache was empty, the cat line never ran
    assert findings(tmp_path, body, X, calls=2) == {("cat-cache", "k = torch.cat([self.past, k], dim=0)")}


def test_leaves_compile_clean_idioms_alone(tmp_path: Path) -> None:
    assert findings(tmp_path, """
y = self.lin(x)
if pos is None and not torch.is_autocast_enabled(x.device.type):
    pos = torch.arange(x.shape[0])
mask = pos[:, None] >= pos[None, :]
y = y.masked_fill(mask[:, :1], 0.0) if y.shape[0] > 1 else y
y = torch.where(y > 0, y, 0.0)
if x.shape[0] > 100:
    print(x.sum().item())  # never runs for this model: not its hazard
return y + mask.sum()
""", X) == set()

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
    torch.manual_seed(0)  # the weights decide which data-dependent branches run: the same every time
    cov, model = Coverage(), module.M()
    with torch.no_grad():
        for _ in range(calls):
            record(cov, model, *args)
    lines = path.read_text().splitlines()
    return {(f.hazard, lines[f.line - 1].strip()) for f in scan(cov, set())}


X, POS = torch.randn(2, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([3])


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


def test_flags_a_tuple_cache_grown_through_locals(tmp_path: Path) -> None:
    """The cache read into locals, grown, stored back as a tuple: the cat lines name the attribute."""
    body = """
k = self.lin(x)
if self.past is not None:
    past_k, past_v = self.past
    k = torch.cat([past_k, k], dim=0)
    v = torch.cat((past_v, k), dim=0)
self.past = (k, k)
return k
"""
    assert findings(tmp_path, body, X, calls=2) == {("cat-cache", "k = torch.cat([past_k, k], dim=0)"),
                                                    ("cat-cache", "v = torch.cat((past_v, k), dim=0)")}


def test_a_cat_of_locals_not_read_from_stored_state_is_not_a_cache(tmp_path: Path) -> None:
    assert findings(tmp_path, """
h = self.lin(x)
both = torch.cat([h, x], dim=0)
self.last = both.sum()
return both
""", X) == set()


def test_flags_branches_on_data_dependent_sizes_and_tensor_values(tmp_path: Path) -> None:
    """`.numel()` of a where-selection, `.any()`/`.all()`, a comparison of a loss, `torch.isnan`:
    and the body of an `if` on a tensor value is reported even when the data did not take it."""
    found = findings(tmp_path, """
y = self.lin(x)
for e in range(2):
    rows = torch.where(y[:, e] > 0)[0]
    picked = y[rows]
    if rows.numel() == 0:
        continue
    if len(picked) > 3:
        y = y + 1
loss = torch.nn.functional.mse_loss(y, x)
if (y > 1e9).any() or not torch.isfinite(y).all():
    y = y * 0
if loss > 1e9:
    y = y * 0
if torch.isnan(loss):
    print("NaN loss")
return y
""", torch.randn(64, 4, generator=torch.Generator().manual_seed(0)))  # 64 rows: no expert is empty
    assert {("tensor-branch", "if rows.numel() == 0:"), ("tensor-branch", "if len(picked) > 3:"),
            ("tensor-branch", "if (y > 1e9).any() or not torch.isfinite(y).all():"),
            ("tensor-branch", "if loss > 1e9:"), ("tensor-branch", "if torch.isnan(loss):"),
            ("print-log", 'print("NaN loss")'), ("data-dependent-shape", "rows = torch.where(y[:, e] > 0)[0]")} <= found


def test_position_counters_and_tensor_buffers(tmp_path: Path) -> None:
    """`self.pos += T` is a Python int position; `self.<buffer> += torch.bincount(...)` is a tensor
    update (not Python state), whose hazard is bincount's data-dependent size."""
    found = findings(tmp_path, """
if not hasattr(self, "pos"):
    self.pos, self.calls = 0, 0
    self.register_buffer("load", torch.zeros(4, dtype=torch.long))
T = x.shape[0]
self.pos += T
self.calls += 1
self.load += torch.bincount(x.argmax(-1), minlength=4)
return self.lin(x)
""", X)
    assert found == {("int-position", "self.pos += T"), ("global-state", "self.calls += 1"),
                     ("data-dependent-shape", "self.load += torch.bincount(x.argmax(-1), minlength=4)")}

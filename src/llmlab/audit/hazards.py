"""The hazards `llmlab audit` knows: what each one causes, the fix, and its section of the guide.

A finding is one hazard at one place in the user's code (file:line). Static findings come from
reading the source (`static.py`); dynamic ones from what dynamo did when it compiled the model
(`dynamic.py`). When both point at the same line, they are one finding, confirmed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

GUIDE = "docs/torch-compile.md"

# What a hazard does to a compiled model (the words the report and --json use).
GRAPH_BREAK = "graph break"
RECOMPILATION = "recompilation"
DYNAMIC_SHAPE = "dynamic shape"
HOST_SYNC = "host sync"


@dataclasses.dataclass(frozen=True)
class Hazard:
    id: str
    title: str
    effects: tuple[str, ...]
    fix: str
    anchor: str  # the section of docs/torch-compile.md

    @property
    def doc(self) -> str:
        return f"{GUIDE}#{self.anchor}"


HAZARDS: dict[str, Hazard] = {h.id: h for h in [
    Hazard("item", "`.item()` in compiled code", (GRAPH_BREAK, HOST_SYNC),
           "keep the value a tensor (return it); call .item() after the step, once per log interval",
           "item-tolist-and-host-copies"),
    Hazard("tolist", "`.tolist()` in compiled code", (GRAPH_BREAK, HOST_SYNC),
           "keep the values a tensor; convert them outside the compiled step", "item-tolist-and-host-copies"),
    Hazard("host-copy", "`.cpu()` / `.numpy()` in compiled code", (HOST_SYNC,),
           "return the tensor and copy it to the host outside the compiled step", "item-tolist-and-host-copies"),
    Hazard("data-dependent-shape", "data-dependent shape (`nonzero`, boolean-mask indexing, `unique`)",
           (GRAPH_BREAK, DYNAMIC_SHAPE),
           "use fixed-size ops: torch.where(mask, x, 0), scatter/gather into buffers of a size known from "
           "shapes, masked sums", "data-dependent-shapes"),
    Hazard("expert-loop", "Python loop over experts with per-expert token selection", (GRAPH_BREAK, DYNAMIC_SHAPE),
           "dispatch with static shapes: capacity buffers (E, C, D) + bmm, or sort by expert + grouped matmul",
           "moe-dispatch-python-loops-over-experts"),
    Hazard("cat-cache", "cache grown with `torch.cat`", (RECOMPILATION, DYNAMIC_SHAPE),
           "preallocate the cache (B, H, S_max, hd) once; write position p with index_copy_ at a tensor "
           "input_pos; attend over the whole buffer with a mask", "static-kv-cache"),
    Hazard("growing-input", "generation loop feeds a sequence that grows (torch.cat) or is cropped",
           (RECOMPILATION, DYNAMIC_SHAPE),
           "prefill once, then decode one token (B, 1) per step into a static KV cache",
           "generation-loops-one-shape-per-step"),
    Hazard("tensor-branch", "Python control flow on a tensor value", (GRAPH_BREAK,),
           "no Python `if` on a value in the step: select with a mask (torch.where), clamp or nan_to_num, "
           "or torch.cond; a check (a NaN loss, an empty expert) goes outside the compiled step on the returned "
           "tensors, or disappears with static-shape code",
           "python-control-flow-on-tensor-values"),
    Hazard("print-log", "`print` / logging in compiled code", (GRAPH_BREAK,),
           "return the value and log it outside the compiled step", "print-and-logging"),
    Hazard("global-state", "mutation of global or Python-attribute state in compiled code", (RECOMPILATION,),
           "return statistics as tensors (outputs), not appended to lists or counted in Python attributes",
           "global-and-python-state"),
    Hazard("int-position", "position handled as a Python int", (RECOMPILATION, GRAPH_BREAK),
           "pass positions as a tensor (input_pos) and index with it; never int() it inside the step",
           "positions-as-tensors"),
    Hazard("graph-break", "graph break (reported by dynamo)", (GRAPH_BREAK,),
           "see dynamo's reason; the guide lists the usual causes", "graph-breaks-in-general"),
    Hazard("recompilation", "recompilation (reported by dynamo)", (RECOMPILATION,),
           "keep shapes and Python values seen by the compiled code constant between calls",
           "recompilations-in-general"),
    Hazard("compile-error", "the compiled step failed", (GRAPH_BREAK,),
           "read the error; run the step eagerly first", "graph-breaks-in-general"),
]}


@dataclasses.dataclass
class Finding:
    hazard: str  # a key of HAZARDS
    file: str
    line: int
    code: str  # the source line, stripped
    detail: str = ""  # what exactly was found
    source: str = "static"  # static | dynamic | static+dynamic
    evidence: list[str] = dataclasses.field(default_factory=list)  # dynamo's reasons

    def to_dict(self) -> dict[str, Any]:
        h = HAZARDS[self.hazard]
        return {"hazard": self.hazard, "title": h.title, "file": self.file, "line": self.line,
                "effects": list(h.effects), "code": self.code, "detail": self.detail, "source": self.source,
                "evidence": self.evidence, "fix": h.fix, "doc": h.doc}

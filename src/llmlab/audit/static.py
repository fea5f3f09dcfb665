"""Static scan: read the source (Python `ast`) of the user code that ran in forward/decode.

Two kinds of code are read differently:
- compiled code — every user function that ran during the eager forward and decode pass
  (`coverage.py`); only the lines that ran are reported;
- generation loops — functions named `generate*` / `sample*` in the audited file and in the files
  of the model's classes: they drive the compiled step, so what matters there is the shape and
  type of what they feed it each iteration.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable, Iterator

from llmlab.audit.coverage import Coverage
from llmlab.audit.hazards import Finding

HOST_METHODS = {"item": "item", "tolist": "tolist", "cpu": "host-copy", "numpy": "host-copy"}
DD_SHAPE_METHODS = {"nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount"}
SIZE_METHODS = {"numel", "size", "dim", "nelement"}  # on a tensor of data-dependent size: a value of the data
BOOL_METHODS = {"bool", "logical_and", "logical_or", "logical_not", "logical_xor", "isnan", "isinf",
                "isfinite", "eq", "ne", "gt", "ge", "lt", "le"}
REDUCTIONS = {"any", "all", "sum", "mean", "max", "min", "amax", "amin", "norm", "equal", "allclose",
              "isnan", "isinf", "isfinite", "count_nonzero", "prod"}
LOGGERS = {"logging", "logger", "log", "LOGGER", "LOG", "warnings", "_logger", "_log"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
MUTATORS = {"append", "extend", "insert", "pop", "popleft", "appendleft", "update", "setdefault", "clear"}
LIST_MUTATORS = {"append", "extend", "insert", "appendleft"}  # on self.<attr>: `update` may be a module's method
CAT = {"cat", "concat", "concatenate"}
NOT_A_MODEL_METHOD = DD_SHAPE_METHODS | HOST_METHODS.keys() | {"size", "argmax", "softmax"}
NOT_A_MODEL_CALL = {"len", "print", "range", "min", "max", "int", "float", "isinstance", "enumerate", "zip"}
# torch.f(...) and F.f(...) return tensors, except torch.is_*/get_* (Python values)
TENSOR_MODULES = {"torch", "F", "torch.nn.functional", "nn.functional"}


def _parse(file: str) -> tuple[ast.Module, list[str]]:
    text = Path(file).read_text(encoding="utf-8")
    return ast.parse(text, filename=file), text.splitlines()


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _first_line(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The line CPython reports as co_firstlineno: the first decorator's, if any."""
    return min([fn.lineno] + [d.lineno for d in fn.decorator_list])


def _module_globals(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Name):
                names.add(t.id)
    return names


def _is_torch_call(call: ast.Call, names: set[str]) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr in names and isinstance(f.value, ast.Name) and f.value.id == "torch"


def _header_lines(node: ast.AST) -> tuple[int, int]:
    """A compound statement counts as run when its header ran, not any line of its body."""
    body = getattr(node, "body", None)
    if isinstance(node, ast.stmt) and isinstance(body, list) and body:
        return node.lineno, max(node.lineno, body[0].lineno - 1)
    return node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno


class _CompiledScan:
    """The rules for code that runs inside the compiled region (forward, decode step)."""

    def __init__(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, globals_: set[str], tensor_args: set[str]):
        self.fn = fn
        self.tensor_args = tensor_args
        params = {a.arg for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs}
        self.params = params
        assigned = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        declared = {name for n in ast.walk(fn) if isinstance(n, ast.Global) for name in n.names}
        self.globals = (globals_ - assigned - params) | declared
        self.masks: set[str] = set()
        self._find_masks()
        self.bindings = _bindings(fn)
        self.stored = {ast.unparse(t) for names, _ in self.bindings for t in names if not isinstance(t, ast.Name)}
        self.origins = self._cache_origins()
        self.sized_by_data = _grow(self.bindings, self._selects_by_value)
        self.tensors = self._tensor_names()

    def _find_masks(self) -> None:
        """Names bound to boolean masks, grown to a fixpoint: a mask made from a mask (`drop = ~keep`)
        is one too, whatever order ast.walk visits the assignments in."""
        assigns = [n for n in ast.walk(self.fn) if isinstance(n, ast.Assign)]
        while True:
            found = {t.id for n in assigns if self._is_mask(n.value) for t in n.targets if isinstance(t, ast.Name)}
            if found <= self.masks:
                return
            self.masks |= found

    def _tensor_names(self) -> set[str]:
        """Tensor arguments, and names bound to what torch/F functions, reductions or the size of a
        data-dependent selection return: a Python branch on one of them reads a tensor's value."""
        names = set(self.tensor_args)
        for targets, value in self.bindings:
            if self._is_tensor_value(value) or self._data_size(value):
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
        return names

    def _is_tensor_value(self, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            return False
        owner = node.func.value
        if ast.unparse(owner) in TENSOR_MODULES:
            return not node.func.attr.startswith(("is_", "get_"))
        return node.func.attr in REDUCTIONS and not (isinstance(owner, ast.Name) and owner.id in ("math", "np"))

    def _reads_tensor(self, node: ast.AST) -> bool:
        return any(self._is_tensor_value(n) or (isinstance(n, ast.Name) and n.id in self.tensors)
                   for n in ast.walk(node))

    def _selects_by_value(self, node: ast.AST) -> bool:
        """node holds a selection whose size the data decides: nonzero, where(mask), x[mask], bincount..."""
        return any(self._dd_call(n) or (isinstance(n, ast.Subscript) and self._subscript_by_mask(n))
                   for n in ast.walk(node))

    @staticmethod
    def _dd_call(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            return False
        one_arg_where = node.func.attr == "where" and len(node.args) == 1 and not node.keywords
        return node.func.attr in DD_SHAPE_METHODS or one_arg_where

    def _data_size(self, node: ast.AST) -> str | None:
        """`rows.numel()`, `rows.size(0)`, `rows.shape[0]`, `len(rows)` of a tensor whose size the
        data chose: the name, else None (the size of an ordinary tensor is a shape, guarded, fine)."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SIZE_METHODS:
            base = node.func.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" and node.args:
            base = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "shape":
            base = node.value.value
        else:
            return None
        return base.id if isinstance(base, ast.Name) and base.id in self.sized_by_data else None

    def _cache_origins(self) -> dict[str, str]:
        """Local names read (directly or through other locals) from an attribute this function also
        assigns: `past_k, past_v = self.cache` then `self.cache = (k, v)` -> past_k: self.cache."""
        attrs = {t for t in self.stored if t.startswith("self.")}
        origins: dict[str, str] = {}
        while True:
            found = {}
            for targets, value in self.bindings:
                source = _attribute_read(value, attrs, origins)
                found.update({t.id: source for t in targets if isinstance(t, ast.Name) and source
                              and t.id not in origins})
            if not found:
                return origins
            origins.update(found)

    def _is_mask(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return not any(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in node.ops)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
            return self._is_mask(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr, ast.BitXor)):
            return self._is_mask(node.left) or self._is_mask(node.right)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr in BOOL_METHODS
        return isinstance(node, ast.Name) and node.id in self.masks

    def run(self) -> Iterator[tuple[str, ast.AST, str]]:
        for node in ast.walk(self.fn):
            if isinstance(node, ast.Call):
                yield from self._call(node)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                yield from self._subscript(node)
            elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
                yield from self._branch(node)
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                yield from self._loop(node)
            elif isinstance(node, ast.Global):
                yield "global-state", node, f"`global {', '.join(node.names)}` rebinds module state"
            elif isinstance(node, ast.AugAssign) and _is_self_attr(node.target) and not self._reads_tensor(node.value):
                yield self._counter(node)

    @staticmethod
    def _counter(node: ast.AugAssign) -> tuple[str, ast.AST, str]:
        """`self.n += 1` (a Python attribute: dynamo guards on its value); a position counter says so."""
        name = ast.unparse(node.target)
        if "pos" in node.target.attr.lower():
            return "int-position", node, (f"`{name}` is a position kept as a Python int and advanced every "
                                          "call: the compiled step is specialised on its value")
        return "global-state", node, f"`{name}` is a Python value mutated every call"

    def _call(self, call: ast.Call) -> Iterator[tuple[str, ast.AST, str]]:
        f = call.func
        if isinstance(f, ast.Attribute):
            if f.attr in HOST_METHODS and not call.args:
                yield HOST_METHODS[f.attr], call, f"`.{f.attr}()` copies a value to the host"
            if f.attr == "bincount":
                yield "data-dependent-shape", call, ("`bincount` returns as many counts as the largest id says "
                                                     "(count into a fixed (E,) with scatter_add_ or one_hot(...).sum)")
            elif self._dd_call(call):
                yield "data-dependent-shape", call, f"`{f.attr}` returns as many elements as the data says"
            if f.attr in CAT and _is_torch_call(call, CAT):
                yield from self._cat(call)
            if isinstance(f.value, ast.Name) and f.value.id in LOGGERS and f.attr in LOG_METHODS:
                yield "print-log", call, f"`{f.value.id}.{f.attr}` runs Python I/O"
            if f.attr in MUTATORS and self._is_state(f.value, f.attr):
                yield "global-state", call, f"`{ast.unparse(f.value)}.{f.attr}(...)` mutates Python state"
        elif isinstance(f, ast.Name):
            if f.id == "print":
                yield "print-log", call, "`print` runs Python I/O"
            elif f.id in ("int", "float", "bool") and len(call.args) == 1 and isinstance(call.args[0], ast.Name) \
                    and call.args[0].id in self.tensor_args:
                name = call.args[0].id
                kind = "int-position" if "pos" in name.lower() else "item"
                yield kind, call, f"`{f.id}({name})` turns the tensor {name} into a Python number"

    def _is_state(self, node: ast.AST, method: str) -> bool:
        return (isinstance(node, ast.Name) and node.id in self.globals) or (
            _is_self_attr(node) and method in LIST_MUTATORS)

    def _cat(self, call: ast.Call) -> Iterator[tuple[str, ast.AST, str]]:
        """A cat of what an attribute this function stores held (itself, or locals read from it),
        or of a `past*`/`*cache*` argument: the cache grows by one step each call."""
        if not call.args or not isinstance(call.args[0], (ast.List, ast.Tuple)):
            return
        for part in call.args[0].elts:
            text = ast.unparse(part)
            if isinstance(part, (ast.Attribute, ast.Subscript)) and (
                    text in self.stored or _attribute_read(part, self.stored, {})):
                yield "cat-cache", call, f"`{text}` grows by one step's keys/values on every call"
                return
            if isinstance(part, ast.Name) and part.id in self.origins:
                yield "cat-cache", call, (f"`{text}` (read from `{self.origins[part.id]}`, which this function "
                                          "stores again) grows by one step's keys/values on every call")
                return
            if isinstance(part, ast.Name) and part.id in self.params and any(
                    w in part.id.lower() for w in ("past", "cache")):
                yield "cat-cache", call, f"`{text}` grows by one step's keys/values on every call"
                return

    def _subscript_by_mask(self, node: ast.Subscript) -> bool:
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return any(self._is_mask(p) for p in parts)

    def _subscript(self, node: ast.Subscript) -> Iterator[tuple[str, ast.AST, str]]:
        if self._subscript_by_mask(node):
            yield "data-dependent-shape", node, f"`{ast.unparse(node)}` selects by a boolean mask"

    def _branch(self, node: ast.AST) -> Iterator[tuple[str, ast.AST, str]]:
        test = node.test
        text = ast.unparse(test)
        if ".item()" in text:
            return  # the .item() finding covers it
        for sub in _truth_values(test):
            selected = self._data_size(sub)
            if selected:
                yield "tensor-branch", node, (f"`{text}`: the size of `{selected}` is what the data selected, so "
                                              "the branch reads a tensor's value on the host")
                return
            call_on_tensor = isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and \
                sub.func.attr in REDUCTIONS and ast.unparse(sub.func.value) != "math"
            if call_on_tensor or (isinstance(sub, ast.Name) and sub.id in self.tensors):
                yield "tensor-branch", node, f"`{text}` needs the tensor's value on the host to choose a branch"
                return

    def _loop(self, node: ast.For | ast.AsyncFor) -> Iterator[tuple[str, ast.AST, str]]:
        if "expert" not in ast.unparse(node.iter).lower():
            return
        inner = [k for stmt in node.body for k, _, _ in _CompiledScan._body_hits(self, stmt)]
        if "data-dependent-shape" in inner:
            yield "expert-loop", node, f"`for ... in {ast.unparse(node.iter)}` selects each expert's tokens by value"

    def _body_hits(self, stmt: ast.stmt) -> Iterator[tuple[str, ast.AST, str]]:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                yield from self._call(node)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                yield from self._subscript(node)


def _bindings(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[list[ast.expr], ast.AST]]:
    """(targets, value) of each assignment in fn, tuple targets flattened: `past_k, past_v =
    self.cache` binds both names to `self.cache` (an over-approximation, enough for these rules)."""
    out = []
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign):
            targets = [t for target in n.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            out.append((targets, n.value))
        elif isinstance(n, ast.AnnAssign) and n.value is not None:
            out.append(([n.target], n.value))
    return out


def _grow(bindings: list[tuple[list[ast.expr], ast.AST]], seed: Callable[[ast.AST], bool]) -> set[str]:
    """Names bound to a value where seed holds, or to a value that reads such a name (a fixpoint:
    `rows = torch.where(m)[0]`, then `x_e = x[rows]` -> both)."""
    found: set[str] = set()
    while True:
        new = {t.id for targets, value in bindings for t in targets if isinstance(t, ast.Name)
               and (seed(value) or {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} & found)}
        if new <= found:
            return found
        found |= new


def _attribute_read(node: ast.AST, attrs: set[str], origins: dict[str, str]) -> str | None:
    """The attribute of attrs (or, through origins, the local read from one) that node reads."""
    for sub in ast.walk(node):
        if _is_self_attr(sub) and ast.unparse(sub) in attrs:
            return ast.unparse(sub)
        if isinstance(sub, ast.Name) and sub.id in origins:
            return origins[sub.id]
    return None


def _truth_values(test: ast.AST) -> Iterator[ast.AST]:
    """The expressions whose value a condition reads: the test itself, operands of and/or/not and
    of comparisons — not arguments of calls (`is_autocast_enabled(x.device)` reads no value of x),
    and not `x is None` identity tests."""
    if isinstance(test, ast.Compare) and all(isinstance(op, (ast.Is, ast.IsNot)) for op in test.ops):
        return
    yield test
    if isinstance(test, ast.BoolOp):
        parts = test.values
    elif isinstance(test, ast.UnaryOp):
        parts = [test.operand]
    elif isinstance(test, ast.Compare):
        parts = [test.left, *test.comparators]
    elif isinstance(test, ast.BinOp):
        parts = [test.left, test.right]
    else:
        parts = []
    for part in parts:
        yield from _truth_values(part)


def _is_self_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"


def _ran_or_live(cov: Coverage, file: str, hits: list[tuple[str, ast.AST, str]]) -> list[tuple[str, ast.AST, str]]:
    """The hits on lines that ran, and those inside an `if` on a tensor value whose test ran: which
    side runs is the data's choice (a NaN loss, an empty expert), so both sides are this model's."""
    live = [(n.body[0].lineno, n.end_lineno or n.lineno) for h, n, _ in hits
            if h == "tensor-branch" and isinstance(n, (ast.If, ast.While)) and cov.ran(file, *_header_lines(n))]
    return [h for h in hits if cov.ran(file, *_header_lines(h[1])) or any(a <= h[1].lineno <= b for a, b in live)]


def _loop_hits(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.AST, str]]:
    """Generation-loop rules: a growing/cropped sequence or a Python int position fed to the model."""
    for loop in (n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While))):
        ints = {loop.target.id} if isinstance(loop, ast.For) and isinstance(loop.target, ast.Name) \
            and isinstance(loop.iter, ast.Call) and ast.unparse(loop.iter.func) == "range" else set()
        grown = {t.id: n for n in ast.walk(loop) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                 and _is_torch_call(n.value, CAT) for t in n.targets if isinstance(t, ast.Name)
                 and t.id in ast.unparse(n.value.args[0] if n.value.args else n.value)}
        crops = {t.id: src for n in ast.walk(loop) if isinstance(n, ast.Assign) for src in grown
                 if src in ast.unparse(n.value) and isinstance(n.value, (ast.Subscript, ast.IfExp))
                 for t in n.targets if isinstance(t, ast.Name)}
        for call in (n for n in ast.walk(loop) if isinstance(n, ast.Call) and _is_model_call(n)):
            args = list(call.args) + [k.value for k in call.keywords]
            for a in args:
                if isinstance(a, ast.Name) and a.id in ints:
                    yield "int-position", call, f"the Python int `{a.id}` is passed to `{ast.unparse(call.func)}`"
                names = {n.id for n in ast.walk(a) if isinstance(n, ast.Name)}
                for name in names & (set(grown) | set(crops)):
                    src = crops.get(name, name)
                    crop = f" (cropped as `{name}`)" if name in crops else ""
                    yield "growing-input", grown[src], (f"`{src}` grows by torch.cat every step and is fed to "
                                                       f"`{ast.unparse(call.func)}`{crop}: a new length each step")


def _is_model_call(call: ast.Call) -> bool:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id not in NOT_A_MODEL_CALL
    root = f
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(root, ast.Name) and root.id not in ("torch", "F", "math", "np") and not (
        isinstance(f, ast.Attribute) and f.attr in NOT_A_MODEL_METHOD)


def scan(cov: Coverage, loop_files: set[str]) -> list[Finding]:
    """Static findings: compiled code that ran (cov) and generation loops in loop_files."""
    findings: dict[tuple[str, str, int], Finding] = {}
    for file in sorted({f for f, _ in cov.functions} | loop_files):
        tree, lines = _parse(file)
        globals_ = _module_globals(tree)
        for fn in _functions(tree):
            key = (file, _first_line(fn))
            if key in cov.functions:
                hits = _ran_or_live(cov, file, list(_CompiledScan(fn, globals_, cov.tensor_args.get(key, set())).run()))
            elif file in loop_files and fn.name.startswith(("generate", "sample")):
                hits = _loop_hits(fn)
            else:
                continue
            for hazard, node, detail in hits:
                line = node.lineno
                findings.setdefault((hazard, file, line), Finding(hazard, file, line, lines[line - 1].strip(), detail))
    return sorted(findings.values(), key=lambda f: (f.file, f.line, f.hazard))

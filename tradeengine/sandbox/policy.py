"""Source -> restricted, instrumented code object.

Three passes over the AST:

1. ``StrategyPolicy`` (RestrictedPython's transformer plus our rules): rejects what strategies
   never need and what the RestrictedPython advisories abuse (classes, generators, ``global``,
   ``with``, imports other than ``math``, dynamic f-string format specs), and rewrites attribute,
   item and iteration access into guard calls.
2. ``check_free_names``: every global name a strategy reads must be a builtin we provide, a
   helper, or defined by the strategy, so ``os`` or ``open`` is a compile error with a line.
3. ``GuardInjector``: adds the budget checks (a tick at each loop iteration, function entry,
   lambda call and comprehension element; depth tracking around each ``def``, inline) and routes the
   operators that can allocate without bound (``+ * ** << %``, star-unpacking, f-string values,
   slice assignment) through size-checking guards.
"""

from __future__ import annotations

import ast
import re
import symtable
from collections.abc import Iterable

from RestrictedPython.transformer import RestrictingNodeTransformer

ALLOWED_IMPORTS = frozenset({"math"})
_FORMAT_NUMBER = re.compile(r"\d+")
_MAX_FORMAT_NUMBER = 999
_RP_LINE = re.compile(r"^Line (\d+): ")


class StrategyPolicy(RestrictingNodeTransformer):
    """RestrictedPython's policy, narrowed to what a signal function needs."""

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.error(node, "class definitions are not allowed in strategies")
        return node

    def visit_Yield(self, node: ast.Yield) -> ast.AST:
        # Generator objects carry frames (gi_frame walks); strategies do not need them.
        self.error(node, "'yield' is not allowed in strategies")
        return node

    def visit_YieldFrom(self, node: ast.YieldFrom) -> ast.AST:
        self.error(node, "'yield from' is not allowed in strategies")
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        # Without it, calls cannot leave state behind for the next call.
        self.error(node, "'global' is not allowed in strategies")
        return node

    def visit_With(self, node: ast.With) -> ast.AST:
        self.error(node, "'with' is not allowed in strategies")
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                self.error(node, f"import of {alias.name!r} is not allowed (only 'math' can be imported)")
        return self.check_import_names(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        if node.level or node.module not in ALLOWED_IMPORTS:
            self.error(node, f"import from {node.module!r} is not allowed (only 'math' can be imported)")
        return self.check_import_names(node)

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        spec = node.format_spec
        if spec is not None:
            parts = spec.values if isinstance(spec, ast.JoinedStr) else [spec]
            for part in parts:
                if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
                    self.error(node, "f-string format specs must be constant")
                    continue
                if any(int(n) > _MAX_FORMAT_NUMBER for n in _FORMAT_NUMBER.findall(part.value)):
                    self.error(node, f"f-string widths and precisions above {_MAX_FORMAT_NUMBER} are not allowed")
        return self.node_contents_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        # Reading an item of anything strategy code can reach (lists, dicts, tuples, strings,
        # read-only mappings and columns) is harmless, so item reads stay plain C subscripts;
        # only slice reads, which copy, go through ``_getitem_`` to be sized.
        if isinstance(node.ctx, ast.Load) and not isinstance(node.slice, ast.Slice):
            return self.node_contents_visit(node)
        result = super().visit_Subscript(node)
        assert isinstance(result, ast.AST)
        return result


def restricted_ast(tree: ast.Module) -> tuple[ast.Module, list[str]]:
    """Apply the policy; return the transformed tree and the error messages (``line N: ...``)."""
    errors: list[str] = []
    warnings: list[str] = []
    used: dict[str, bool] = {}
    policy = StrategyPolicy(errors, warnings, used)
    result = policy.visit(tree)
    assert isinstance(result, ast.Module)
    return result, [_RP_LINE.sub(r"line \1: ", message) for message in errors]


# --------------------------------------------------------------------------- free names


def _global_reads(table: symtable.SymbolTable) -> Iterable[str]:
    for symbol in table.get_symbols():
        if table.get_type() == "module":
            if symbol.is_referenced() and not (symbol.is_assigned() or symbol.is_imported()):
                yield symbol.get_name()
        elif symbol.is_global() and symbol.is_referenced():
            yield symbol.get_name()
    for child in table.get_children():
        yield from _global_reads(child)


def _module_bindings(table: symtable.SymbolTable) -> set[str]:
    return {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}


def check_free_names(source: str, tree: ast.Module, filename: str, allowed: frozenset[str]) -> list[str]:
    """Return errors for global names that are neither allowed nor defined by the strategy."""
    table = symtable.symtable(source, filename, "exec")
    defined = _module_bindings(table)
    unknown = {name for name in _global_reads(table) if name not in allowed and name not in defined}
    if not unknown:
        return []
    errors: list[str] = []
    seen: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in unknown and node.id not in seen:
            seen.add(node.id)
            errors.append(
                f"line {node.lineno}: name {node.id!r} is not allowed (strategies can use the "
                f"indicator helpers, math and basic builtins)"
            )
    errors.sort(key=lambda message: int(message.split(":", 1)[0].split()[1]))
    return errors


# --------------------------------------------------------------------------- instrumentation


def _name(identifier: str) -> ast.Name:
    return ast.Name(id=identifier, ctx=ast.Load())


def _call(func: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_name(func), args=list(args), keywords=[])


def _tick_stmts() -> list[ast.stmt]:
    """``_b_.ticks -= 1; if _b_.ticks < 0: _b_.slow_check()``: a loop iteration's check, inline."""
    ticks_store = ast.Attribute(value=_name("_b_"), attr="ticks", ctx=ast.Store())
    ticks_load = ast.Attribute(value=_name("_b_"), attr="ticks", ctx=ast.Load())
    slow = ast.Call(func=ast.Attribute(value=_name("_b_"), attr="slow_check", ctx=ast.Load()), args=[], keywords=[])
    return [
        ast.AugAssign(target=ticks_store, op=ast.Sub(), value=ast.Constant(value=1)),
        ast.If(
            test=ast.Compare(left=ticks_load, ops=[ast.Lt()], comparators=[ast.Constant(value=0)]),
            body=[ast.Expr(value=slow)],
            orelse=[],
        ),
    ]


def _is_number(node: ast.expr, kinds: tuple[type, ...] = (int, float)) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, kinds) and not isinstance(node.value, bool)


_BINOP_GUARDS: dict[type[ast.operator], str] = {
    ast.Add: "_add_",
    ast.Mult: "_mul_",
    ast.Pow: "_pow_",
    ast.LShift: "_lshift_",
    ast.Mod: "_mod_",
}
_INPLACE_OPS: dict[str, type[ast.operator]] = {
    "+=": ast.Add,
    "-=": ast.Sub,
    "*=": ast.Mult,
    "/=": ast.Div,
    "//=": ast.FloorDiv,
    "**=": ast.Pow,
    "%=": ast.Mod,
}


def _float_fast_path(left: ast.expr, plain: ast.expr, guarded: ast.expr) -> ast.expr:
    """``plain if type(left) is float else guarded`` when ``left`` can be evaluated twice.

    Any operator with a float on the left either computes a float or raises TypeError, so only
    the other cases need the guard. ``left`` must be a plain name or constant (no side effects).
    """
    if not isinstance(left, ast.Name | ast.Constant):
        return guarded
    test = ast.Compare(
        left=ast.Call(func=_name("_type_"), args=[left], keywords=[]),
        ops=[ast.Is()],
        comparators=[_name("_float_")],
    )
    return ast.IfExp(test=test, body=plain, orelse=guarded)


def _depth_stmts(max_depth: int) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """A function entry's checks and its exit, inline (no guard call on every strategy call):

    ``<tick>; _b_.depth += 1; if _b_.depth > max_depth: raise _b_.trip("recursion", ...)`` and
    ``_b_.depth -= 1``.
    """
    depth_store = ast.Attribute(value=_name("_b_"), attr="depth", ctx=ast.Store())
    depth_load = ast.Attribute(value=_name("_b_"), attr="depth", ctx=ast.Load())
    trip = ast.Call(
        func=ast.Attribute(value=_name("_b_"), attr="trip", ctx=ast.Load()),
        args=[ast.Constant(value="recursion"), ast.Constant(value=f"recursion deeper than {max_depth} calls")],
        keywords=[],
    )
    enter = [
        *_tick_stmts(),
        ast.AugAssign(target=depth_store, op=ast.Add(), value=ast.Constant(value=1)),
        ast.If(
            test=ast.Compare(left=depth_load, ops=[ast.Gt()], comparators=[ast.Constant(value=max_depth)]),
            body=[ast.Raise(exc=trip, cause=None)],
            orelse=[],
        ),
    ]
    leave: list[ast.stmt] = [ast.AugAssign(target=depth_store, op=ast.Sub(), value=ast.Constant(value=1))]
    return enter, leave


def _is_flat_unpack(node: ast.Call) -> bool:
    """``_unpack_sequence_(value, {"childs": (), "min_len": n}, _getiter_)``: RestrictedPython's
    guard for an assignment to names without nested targets (``a, b = value``, ``a, *b = value``).
    It is routed to ``_unpack_flat_``, which spares building the spec on every assignment."""
    if not (isinstance(node.func, ast.Name) and node.func.id == "_unpack_sequence_" and len(node.args) == 3):
        return False
    spec = node.args[1]
    if not isinstance(spec, ast.Dict) or len(spec.keys) != 2:
        return False
    for key, value in zip(spec.keys, spec.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "childs":
            return isinstance(value, ast.Tuple) and not value.elts
    return False


class GuardInjector(ast.NodeTransformer):
    """Add budget checks and size guards to RestrictedPython's output."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        enter, leave = _depth_stmts(self.max_depth)
        # try/finally costs nothing on the normal path in 3.11 and keeps the depth exact.
        node.body = [*enter, ast.Try(body=node.body, handlers=[], orelse=[], finalbody=leave)]
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.generic_visit(node)
        node.body = ast.BoolOp(op=ast.And(), values=[_call("_tick_"), node.body])
        return node

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body[:0] = _tick_stmts()
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        self.generic_visit(node)
        node.body[:0] = _tick_stmts()
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        self.generic_visit(node)
        node.ifs.insert(0, _call("_tick_"))
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        left, right, op = node.left, node.right, node.op
        guard = _BINOP_GUARDS.get(type(op))
        if guard is None:
            return node
        if isinstance(op, ast.Add) and (_is_number(left) or _is_number(right)):
            return node  # a number on either side rules out sequence concatenation
        if isinstance(op, ast.Mult | ast.Pow) and (_is_number(left, (float,)) or _is_number(right, (float,))):
            return node  # float operands cannot repeat a sequence or build a huge integer
        if isinstance(op, ast.Mod) and _is_number(left):
            return node  # not string formatting
        return _float_fast_path(left, ast.BinOp(left=left, op=op, right=right), _call(guard, left, right))

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        self.generic_visit(node)
        for target in node.targets:
            self._guard_slice_store(target)
        # RestrictedPython turns ``x += y`` into ``x = _inplacevar_("+=", x, y)``; a float on
        # the left cannot grow, so that common case skips the guard call.
        value = node.value
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "_inplacevar_"
            and len(value.args) == 3
            and isinstance(value.args[0], ast.Constant)
            and value.args[0].value in _INPLACE_OPS
        ):
            operator_node = _INPLACE_OPS[value.args[0].value]()
            plain = ast.BinOp(left=value.args[1], op=operator_node, right=value.args[2])
            node.value = _float_fast_path(value.args[1], plain, value)
        return node

    def _star(self, elements: list[ast.expr]) -> None:
        for element in elements:
            if isinstance(element, ast.Starred):
                element.value = _call("_star_", element.value)

    def visit_List(self, node: ast.List) -> ast.AST:
        self.generic_visit(node)
        self._star(node.elts)
        return node

    def visit_Tuple(self, node: ast.Tuple) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            self._star(node.elts)
        return node

    def visit_Set(self, node: ast.Set) -> ast.AST:
        self.generic_visit(node)
        self._star(node.elts)
        return node

    def visit_Dict(self, node: ast.Dict) -> ast.AST:
        self.generic_visit(node)
        node.values = [
            _call("_star_", value) if key is None else value for key, value in zip(node.keys, node.values, strict=True)
        ]
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if _is_flat_unpack(node):
            return _call("_unpack_flat_", node.args[0])
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                arg.value = _call("_star_", arg.value)
        for keyword in node.keywords:
            if keyword.arg is None:
                keyword.value = _call("_star_", keyword.value)
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        self.generic_visit(node)
        # The guard does the !r/!s/!a conversion itself, with bounded output.
        node.value = _call("_fmt_", node.value, ast.Constant(value=node.conversion))
        node.conversion = -1
        return node

    def _guard_slice_store(self, target: ast.expr) -> None:
        # RestrictedPython turns ``x[a:b] = v`` into ``_write_(x)[a:b] = v``; slice stores may
        # consume an unbounded iterable in C, so they get a proxy that checks the size first.
        if (
            isinstance(target, ast.Subscript)
            and isinstance(target.slice, ast.Slice)
            and isinstance(target.value, ast.Call)
            and isinstance(target.value.func, ast.Name)
            and target.value.func.id == "_write_"
        ):
            target.value.func.id = "_write_slice_"
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._guard_slice_store(element)


def instrument(tree: ast.Module, max_depth: int) -> ast.Module:
    """Add budget checks and guards; locations are kept so errors point at the user's lines.

    ``max_depth`` is the limit on nested calls of strategy-defined functions.
    """
    result = GuardInjector(max_depth).visit(tree)
    assert isinstance(result, ast.Module)
    return ast.fix_missing_locations(result)

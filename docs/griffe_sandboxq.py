"""A griffe extension for the API reference: what static analysis cannot see.

The public methods of ``Queue``, ``AsyncQueue``, ``Job`` and ``AsyncJob`` are
made from the shared operations (``add = blocking(QueueCore._add)``); griffe
sees them as attributes. This extension turns each into the method it is:
the operation's parameters and docstring, its result type instead of
``Op[...]`` (with the queue's job type for ``J``), and ``async`` for the
``awaiting`` ones. It also turns the Sphinx roles of the docstrings
(``:class:`Queue```) into code spans, which Markdown understands.

mkdocs.yml loads it through mkdocstrings' ``extensions`` option.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import griffe

#: The wrappers of sandboxq.ops, and whether the method they make is a coroutine.
WRAPPERS = {"blocking": False, "awaiting": True}

ROLE = re.compile(r":(?:class|meth|func|mod|attr|exc|data|obj):`~?([^`]+)`")

logger = griffe.get_logger(__name__)


class FrontEndMethods(griffe.Extension):
    """Document ``name = blocking(Core._op)`` class attributes as methods."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "sandboxq":
            return
        for cls in _classes(pkg):
            for name, member in list(cls.members.items()):
                if isinstance(member, griffe.Attribute):
                    method = self._method(cls, name, member)
                    if method is not None:
                        cls.set_member(name, method)
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)

    def _method(
        self, cls: griffe.Class, name: str, attr: griffe.Attribute
    ) -> griffe.Function | None:
        value = attr.value
        if not isinstance(value, griffe.ExprCall) or not isinstance(
            value.function, griffe.ExprName
        ):
            return None
        if value.function.name not in WRAPPERS or len(value.arguments) != 1:
            return None
        target = value.arguments[0]
        if not isinstance(target, griffe.ExprAttribute):
            return None
        owner_expr, op_name = target.values[0], target.values[-1]
        owner = cls.modules_collection[cls.resolve(str(owner_expr))]
        # all_members: the operation may live in a part QueueCore is made
        # of (sandboxq.core_looking...), a base class.
        op = owner.all_members[str(op_name)]
        if isinstance(op, griffe.Alias):
            op = op.final_target
        if not isinstance(op, griffe.Function):
            raise TypeError(f"{cls.path}.{name}: {target} is not a function")
        types = _type_arguments(cls, owner)
        method = griffe.Function(
            name,
            parameters=griffe.Parameters(
                *(
                    griffe.Parameter(
                        p.name,
                        annotation=_substitute(p.annotation, types, cls),
                        kind=p.kind,
                        default=p.default,
                        docstring=p.docstring,
                    )
                    for p in op.parameters
                )
            ),
            returns=_substitute(_unwrap_op(op.returns), types, cls),
            docstring=op.docstring,
            lineno=attr.lineno,
            endlineno=attr.endlineno,
        )
        if WRAPPERS[value.function.name]:
            method.labels.add("async")
        return method


def _classes(module: griffe.Module) -> list[griffe.Class]:
    found = []
    for member in module.members.values():
        if member.is_alias:
            continue
        if isinstance(member, griffe.Module):
            found += _classes(member)
        elif isinstance(member, griffe.Class):
            found.append(member)
    return found


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found += _objects(member)  # type: ignore[arg-type]
    return found


def _unwrap_op(returns: Any) -> Any:
    """``Op[R]`` (an operation's return annotation) → ``R``."""
    if isinstance(returns, griffe.ExprSubscript) and str(returns.left) == "Op":
        return returns.slice
    return returns


def _type_arguments(cls: griffe.Class, owner: griffe.Object) -> dict[str, str]:
    """The type variables of generic ``owner`` as ``cls`` binds them:
    ``QueueCore(..., Generic[J])`` and ``Queue(QueueCore[Job])`` → ``{"J": "Job"}``."""
    params: list[str] = []
    for base in getattr(owner, "bases", ()):
        if isinstance(base, griffe.ExprSubscript) and str(base.left) == "Generic":
            params = [str(base.slice)]
    for base in cls.bases:
        if isinstance(base, griffe.ExprSubscript) and base.canonical_path == owner.path:
            return dict(zip(params, [str(base.slice)], strict=False))
    return {}


def _substitute(expr: Any, types: dict[str, str], scope: griffe.Class) -> Any:
    """``expr`` with each type variable of ``types`` replaced by its type,
    resolved in ``scope``."""
    if isinstance(expr, griffe.ExprName):
        if expr.name in types:
            return griffe.ExprName(types[expr.name], parent=scope)
        return expr
    if isinstance(expr, list):
        return [_substitute(e, types, scope) for e in expr]
    if isinstance(expr, griffe.Expr) and dataclasses.is_dataclass(expr):
        changes = {
            f.name: _substitute(getattr(expr, f.name), types, scope)
            for f in dataclasses.fields(expr)
            if f.name != "parent"
        }
        return dataclasses.replace(expr, **changes)
    return expr

"""AST values -> typed IR values, checked against the schema (types, ranges, constructor arguments).

Bare names are resolved by what the attribute expects: an enum symbol (`mode = max`), then a param
(`lr = lr`), then a constructor named without parentheses (`schedule = constant`), then a block
reference (`model = base`, `data = reviews.test`). Problems become diagnostics; conversion goes on
with the next value so that one run reports everything.
"""

from __future__ import annotations

import difflib
import posixpath
from dataclasses import dataclass, field

from ftdsl.diagnostics import Diagnostic, Label, make
from ftdsl.ir import schema as S
from ftdsl.ir.nodes import CallV, DictIR, ListIR, Lit, RefV, Sym, Value
from ftdsl.syntax import ast as A


@dataclass
class Scope:
    """What names mean while converting: params (AST values, not yet typed) and block names."""

    params: dict  # name -> A.Value
    blocks: dict  # name -> kind
    diags: list = field(default_factory=list)
    param_uses: dict = field(default_factory=dict)
    _expanding: tuple = ()  # params being expanded (a param cannot refer to itself)
    path_base: str = "."  # folder of the file being converted, relative to the root pipeline's folder
    cyclic: frozenset = frozenset()  # params on a cycle: reported once where they are defined
    broken: frozenset = frozenset()  # names of items lost to syntax errors: not "undefined"


def did_you_mean(word: str, options) -> str | None:
    m = difflib.get_close_matches(word, sorted(set(options)), n=3, cutoff=0.6)
    if not m:
        return None
    return "did you mean " + " or ".join(f"`{x}`" for x in m) + "?"


def _shape(v: A.Value) -> str:
    return {A.Number: "a number", A.String: "a string", A.Bool: "a boolean", A.Null: "`null`",
            A.Ref: "a name", A.ListV: "a list", A.DictV: "a dict", A.Call: "a constructor call",
            A.Invalid: "an invalid value"}[type(v)]


def _accepts(t: S.Type, kind: type) -> bool:
    if isinstance(t, S.OneOf):
        return any(_accepts(o, kind) for o in t.options)
    return isinstance(t, kind)


def default_value(f: S.Field) -> Value:
    """The IR value of a field's declared default."""
    return _default_for(f.type, f.default)


def _default_for(t: S.Type, d) -> Value:
    if d is None or d is S.REQUIRED:
        return Lit(None, None)
    if isinstance(t, S.OneOf):
        for o in t.options:
            if isinstance(o, S.Enum) and d in o.choices:
                return Sym(d, None)
        for o in t.options:
            if isinstance(o, S.CtorT) and isinstance(d, str):
                return _default_for(o, d)
        return Lit(d, None)
    if isinstance(t, S.CtorT) and isinstance(d, str):
        ctor = S.CONSTRUCTORS[t.family][d]
        return CallV(d, tuple((a.name, default_value(a)) for a in ctor.args), None, frozenset())
    if isinstance(t, S.Enum):
        return Sym(d, None)
    if isinstance(t, S.ListT) and isinstance(d, list):
        return ListIR(tuple(_default_for(t.item, x) for x in d), None)
    if isinstance(t, S.Float) and isinstance(d, int) and not isinstance(d, bool):
        return Lit(float(d), None)
    return Lit(d, None)


class Converter:
    def __init__(self, scope: Scope):
        self.scope = scope

    def err(self, code: str, message: str, span, **kw) -> None:
        self.scope.diags.append(make(code, message, span, **kw))

    def named_values(self, items, lookup, seen: dict[str, A.Span], *, path, unknown, twice) -> dict[str, Value]:
        """Convert ``name = value`` items (``(name, name_span, value)``: keyword arguments, struct
        keys, block attributes) against ``lookup(name)``'s spec. An unknown name is FTP201
        (``unknown(name)`` gives the message and the diagnostic's extras), a name already in ``seen``
        (name -> where it was given; updated) FTP206 (``twice(name)``: the message and the label);
        each value is converted for ``path(name)``. Returns the converted values by name: an invalid
        one is left out (already reported)."""
        got: dict[str, Value] = {}
        for name, span, value in items:
            spec = lookup(name)
            if spec is None:
                message, extras = unknown(name)
                self.err("FTP201", message, span, **extras)
                continue
            if name in seen:
                message, label = twice(name)
                self.err("FTP206", message, span, label=label, secondary=(Label(seen[name], "first here"),))
                continue
            seen[name] = span
            c = self.convert(value, spec.type, path(name))
            if c is not None:
                got[name] = c
        return got

    def defaults(self, specs, given, missing) -> dict[str, Value]:
        """The default values of the ``specs`` whose names are not in ``given``; a required one is
        FTP208 instead (``missing(spec)`` gives the message, the span and the diagnostic's extras)."""
        out: dict[str, Value] = {}
        for spec in specs:
            if spec.name in given:
                continue
            if spec.required:
                message, span, extras = missing(spec)
                self.err("FTP208", message, span, **extras)
            else:
                out[spec.name] = default_value(spec)
        return out

    # entry point ---------------------------------------------------------------------------
    def convert(self, v: A.Value, t: S.Type, what: str) -> Value | None:
        """Convert `v` to type `t`; `what` names the attribute in messages (`train.batch`)."""
        vt = v.__class__
        if vt is A.Null:
            return Lit(None, v.span)
        if vt is A.Invalid:  # its error was reported by the parser
            return None
        if vt is A.Ref:
            return self._ref(v, t, what)
        # dispatch on the declared type (a dict lookup: this runs for every value of the file)
        return _HANDLERS[t.__class__](self, v, t, what)

    def _c_number(self, v, t, what):
        return self._number(v, t, what)

    def _c_str(self, v, t, what):
        if v.__class__ is A.String:
            return Lit(v.value, v.span)
        return self._mismatch(v, t, what)

    def _c_path(self, v, t, what):
        # Paths are relative to the file that writes them; a `use`d file in another folder has its
        # paths rebased onto the root pipeline's folder, which is what stages resolve against.
        if v.__class__ is not A.String:
            return self._mismatch(v, t, what)
        base = self.scope.path_base
        value = v.value
        if base and base != "." and value and not posixpath.isabs(value):
            value = posixpath.normpath(posixpath.join(base, value))
        return Lit(value, v.span)

    def _c_bool(self, v, t, what):
        if v.__class__ is A.Bool:
            return Lit(v.value, v.span)
        return self._mismatch(v, t, what)

    def _c_enum(self, v, t, what):
        if v.__class__ is A.String:
            if v.value in t.choices:
                return Sym(v.value, v.span)
            self.err("FTP203", f"`{what}` must be {t.describe()}, not \"{v.value}\"", v.span,
                     label="not a choice", hint=did_you_mean(v.value, t.choices))
            return None
        return self._mismatch(v, t, what)

    def _c_ctor(self, v, t, what):
        if v.__class__ is A.Call:
            return self._call(v, t, what)
        return self._mismatch(v, t, what)

    def _c_list(self, v, t, what):
        if v.__class__ is not A.ListV:
            return self._mismatch(v, t, what)
        n = len(v.items)
        if t.max_len is not None and n > t.max_len:
            # Said before converting a single item: a 2-million-element list is refused in time and
            # memory proportional to its text, not to an IR node per element.
            self.err("FTP203", f"`{what}` takes at most {t.max_len} items, found {n}", v.span,
                     label="too many items")
            return None
        items = []
        for i, item in enumerate(v.items):
            c = self.convert(item, t.item, f"{what}[{i}]")
            if c is not None:
                items.append(c)
        if n < t.min_len:
            self.err("FTP203", f"`{what}` needs at least {t.min_len} item{'s' if t.min_len > 1 else ''}",
                     v.span, label="empty list")
        return ListIR(tuple(items), v.span)

    def _c_struct(self, v, t, what):
        if v.__class__ is not A.DictV:
            return self._mismatch(v, t, what)
        return self._struct(v, t, what)

    def _c_map(self, v, t, what):
        if v.__class__ is not A.DictV:
            return self._mismatch(v, t, what)
        seen: dict[str, A.Span] = {}
        entries = []
        for e in v.entries:
            if e.key in seen:
                self.err("FTP206", f"key `{e.key}` appears twice in `{what}`", e.key_span, label="duplicate key",
                         secondary=(Label(seen[e.key], "first here"),))
                continue
            seen[e.key] = e.key_span
            c = self.convert(e.value, t.value, f"{what}.{e.key}")
            if c is not None:
                entries.append((e.key, c))
        return DictIR(tuple(entries), v.span, tuple(seen.values()))

    # pieces --------------------------------------------------------------------------------
    def _mismatch(self, v: A.Value, t: S.Type, what: str) -> None:
        self.err("FTP202", f"`{what}` expects {t.describe()}, found {_shape(v)}", v.span,
                 label=f"expected {_short(t)}")
        return None

    def _number(self, v: A.Value, t, what: str):
        if v.__class__ is not A.Number:
            if isinstance(v, A.String):
                try:
                    float(v.value)
                    hint = f"remove the quotes: {v.value}"
                except ValueError:
                    hint = None
                self.err("FTP202", f"`{what}` expects {t.describe()}, found a string", v.span,
                         label=f"expected {_short(t)}", hint=hint)
                return None
            return self._mismatch(v, t, what)
        x = v.value
        if t.__class__ is S.Int:
            if x.__class__ is float:
                self.err("FTP202", f"`{what}` expects an integer, found `{v.text}`", v.span, label="not an integer")
                return None
            if (t.min is not None and x < t.min) or (t.max is not None and x > t.max):
                self.err("FTP203", f"`{what}` must be {t.describe().removeprefix('an integer ')}, found {v.text}",
                         v.span, label="out of range")
                return None
            return Lit(x, v.span)
        xf = float(x)
        bad = ((t.min is not None and (xf < t.min or (t.min_open and xf == t.min)))
               or (t.max is not None and (xf > t.max or (t.max_open and xf == t.max))))
        if bad:
            self.err("FTP203", f"`{what}` must be {t.describe().removeprefix('a number ')}, found {v.text}", v.span,
                     label="out of range")
            return None
        return Lit(xf, v.span)

    def _one_of(self, v: A.Value, t: S.OneOf, what: str):
        # Try the options whose shape matches the value, in order (so `32` stays an integer where
        # Int comes before Float); if none accepts it, report the first one's specific errors.
        matching = [o for o in t.options if _matches_shape(v, o)]
        if not matching:
            return self._mismatch(v, t, what)
        first_errors = None
        for o in matching:
            saved = self.scope.diags
            self.scope.diags = []
            try:
                out = self.convert(v, o, what)
                errs = self.scope.diags
            finally:
                self.scope.diags = saved
            if out is not None and not errs:
                return out
            if first_errors is None:
                first_errors = errs
        self.scope.diags.extend(first_errors or [])
        return None

    def _ref(self, v: A.Ref, t: S.Type, what: str):
        name = v.parts[0]
        scope = self.scope
        if len(v.parts) == 1:
            for e in _options(t, S.Enum):
                if name in e.choices:
                    return Sym(name, v.span)
            if name in scope.params:
                if name in scope.cyclic:
                    return None  # FTP205 is reported at the params themselves
                if name in scope._expanding:
                    self.err("FTP205", f"param `{name}` refers to itself", v.span, label="cycle")
                    return None
                scope.param_uses[name] = scope.param_uses.get(name, 0) + 1
                scope._expanding = scope._expanding + (name,)
                try:
                    return self.convert(scope.params[name], t, what)
                finally:
                    scope._expanding = scope._expanding[:-1]
            for c in _options(t, S.CtorT):
                ctor = S.CONSTRUCTORS.get(c.family, {}).get(name)
                if ctor is not None:
                    return self._call(A.Call(name, v.span, (), (), v.span), c, what)
        refs = _options(t, S.RefT)
        if refs and name in scope.blocks:
            if len(v.parts) > 2:
                self.err("FTP204", f"`{v.dotted}` is not a block or a split", v.span, label="too many parts",
                         hint=f"write `{name}` or `{name}.SPLIT`")
                return None
            return RefV(name, v.parts[1] if len(v.parts) == 2 else None, v.span)
        if name in scope.broken:
            return None  # the item of that name has a syntax error: that error says it all
        # Nothing matched: explain with the names that would have been valid here.
        options: list[str] = []
        for e in _options(t, S.Enum):
            options += list(e.choices)
        for c in _options(t, S.CtorT):
            options += list(S.CONSTRUCTORS.get(c.family, {}))
        if refs:
            options += list(scope.blocks)
        options += list(scope.params)
        if name in scope.blocks and len(v.parts) == 1:
            self.err("FTP202", f"`{what}` expects {t.describe()}, found a reference to block `{name}`", v.span,
                     label=f"expected {_short(t)}")
            return None
        expected = t.describe()
        self.err("FTP204", f"undefined name `{v.dotted}` in `{what}`", v.span, label="not defined",
                 hint=did_you_mean(name, options) or f"`{what}` expects {expected}")
        return None

    def _call(self, v: A.Call, t: S.CtorT, what: str):
        family = S.CONSTRUCTORS.get(t.family, {})
        ctor = family.get(v.name)
        if ctor is None:
            other = S.all_constructors().get(v.name)
            if other is not None:
                self.err("FTP202", f"`{v.name}(...)` is {S.article(other.family.replace('_', ' '))}, but `{what}` expects "
                                   f"{t.describe()}", v.name_span, label="wrong kind of constructor")
            else:
                self.err("FTP215", f"unknown {t.family.replace('_', ' ')} `{v.name}` in `{what}`", v.name_span,
                         label="unknown constructor", hint=did_you_mean(v.name, family) or
                         "known: " + ", ".join(family))
            return None
        args: dict[str, Value] = {}
        spans: dict[str, A.Span] = {}
        written = set()
        for i, a in enumerate(v.args):
            if i >= len(ctor.args):
                self.err("FTP201", f"`{v.name}(...)` takes at most {len(ctor.args)} positional argument"
                                   f"{'s' if len(ctor.args) != 1 else ''}", a.span, label="extra argument")
                continue
            spec = ctor.args[i]
            c = self.convert(a, spec.type, f"{what}.{spec.name}")
            spans[spec.name] = a.span
            written.add(spec.name)
            if c is not None:
                args[spec.name] = c
        names = [a.name for a in ctor.args]
        args.update(self.named_values(
            ((kw.name, kw.name_span, kw.value) for kw in v.kwargs), ctor.arg, spans, path=lambda n: f"{what}.{n}",
            unknown=lambda n: (f"`{v.name}(...)` has no argument `{n}`", dict(
                label="unknown argument", hint=did_you_mean(n, names),
                notes=(f"arguments of `{v.name}`: " + (", ".join(names) or "none"),))),
            twice=lambda n: (f"argument `{n}` of `{v.name}(...)` is given twice", "given again")))
        written.update(spans)
        # an argument written but invalid is in `spans` (already reported), not in `args`
        filled = self.defaults(ctor.args, spans, lambda spec: (
            f"`{v.name}(...)` needs argument `{spec.name}`", v.span,
            dict(label=f"missing `{spec.name}`", hint=f"`{spec.name}`: {spec.doc or spec.type.describe()}")))
        out = [(n, args[n] if n in args else filled[n]) for n in names if n in args or n in filled]
        return CallV(v.name, tuple(out), v.span, frozenset(written))

    def _struct(self, v: A.DictV, t: S.StructT, what: str):
        seen: dict[str, A.Span] = {}
        keys = [f.name for f in t.fields]
        got = self.named_values(
            ((e.key, e.key_span, e.value) for e in v.entries), t.get, seen, path=lambda k: f"{what}.{k}",
            unknown=lambda k: (f"`{what}` has no key `{k}`", dict(
                label="unknown key", hint=did_you_mean(k, keys), notes=("valid keys: " + ", ".join(keys),))),
            twice=lambda k: (f"key `{k}` appears twice in `{what}`", "duplicate key"))
        filled = self.defaults(t.fields, seen, lambda spec: (
            f"`{what}` needs key `{spec.name}`", v.span, dict(label=f"missing `{spec.name}`")))
        entries = [(k, got[k] if k in got else filled[k]) for k in keys if k in got or k in filled]
        return DictIR(tuple(entries), v.span, tuple(seen.get(k) for k, _ in entries))


_HANDLERS = {
    S.Int: Converter._c_number, S.Float: Converter._c_number, S.Str: Converter._c_str, S.PathT: Converter._c_path,
    S.Bool: Converter._c_bool, S.Enum: Converter._c_enum, S.CtorT: Converter._c_ctor, S.RefT: Converter._mismatch,
    S.ListT: Converter._c_list, S.StructT: Converter._c_struct, S.MapT: Converter._c_map,
    S.OneOf: Converter._one_of, S.Type: Converter._mismatch,
}


def _options(t: S.Type, kind: type) -> list:
    if isinstance(t, S.OneOf):
        return [o for o in t.options if isinstance(o, kind)]
    if isinstance(t, S.ListT):
        return []
    return [t] if isinstance(t, kind) else []


def _matches_shape(v: A.Value, t: S.Type) -> bool:
    if isinstance(v, A.Number):
        return isinstance(t, (S.Int, S.Float))
    if isinstance(v, A.String):
        return isinstance(t, (S.Str, S.PathT)) or (isinstance(t, S.Enum) and v.value in t.choices)
    if isinstance(v, A.Bool):
        return isinstance(t, S.Bool)
    if isinstance(v, A.ListV):
        return isinstance(t, S.ListT)
    if isinstance(v, A.DictV):
        return isinstance(t, (S.StructT, S.MapT))
    if isinstance(v, A.Call):
        return isinstance(t, S.CtorT)
    return False


def _short(t: S.Type) -> str:
    if isinstance(t, S.Int):
        return "an integer"
    if isinstance(t, S.Float):
        return "a number"
    if isinstance(t, (S.Str, S.PathT)):
        return "a string"
    if isinstance(t, S.Bool):
        return "true or false"
    if isinstance(t, S.Enum):
        return "a symbol"
    if isinstance(t, S.CtorT):
        return S.article(t.family.replace('_', ' '))
    if isinstance(t, S.RefT):
        return "a reference"
    if isinstance(t, S.ListT):
        return "a list"
    if isinstance(t, (S.StructT, S.MapT)):
        return "a dict"
    if isinstance(t, S.OneOf):
        return " or ".join(_short(o) for o in t.options)
    return "a value"


__all__ = ["Converter", "Scope", "default_value", "did_you_mean", "Diagnostic"]

"""The `do_not_contact` condition language (SPEC §2, §7.7, §7.8).

A condition is parsed by a lark grammar into a small syntax tree, type-checked
against the people schema and compiled into a Polars expression. User text is
never evaluated or pasted into SQL: it only ever becomes literals and column
references of a Polars expression.

Comparisons follow SQL three-valued logic: anything compared with null is
unknown, `and`/`or`/`not` are Kleene (which is what Polars boolean operators
do), and a rule matches only where its condition is true.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import reduce
from typing import Literal as TypingLiteral
from typing import TypeAlias

import polars as pl
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

__all__ = [
    "ConfigError",
    "ConditionError",
    "Condition",
    "parse_condition",
    "compile_condition",
    "condition_schema",
]


class ConfigError(Exception):
    """A job file or one of its rules cannot be used; the CLI exits with code 2.

    Defined here, in the leaf module of the package, so that `ConditionError`
    can derive from it; `statusbatch.config` exports both.
    """


class ConditionError(ConfigError):
    """A `do_not_contact` condition that does not parse or does not fit the people table."""

    def __init__(self, rule_name: str, problem: str, *, source: str | None = None) -> None:
        self.rule_name = rule_name
        self.problem = problem
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}do_not_contact rule '{rule_name}': {problem}")

    def in_file(self, source: str) -> ConditionError:
        """The same error, prefixed with the job file it comes from."""
        return ConditionError(self.rule_name, self.problem, source=source)

    def __reduce__(self) -> tuple[object, ...]:
        """Picklable (schedulers ship errors between processes) despite the keyword argument."""
        return (_rebuild, (self.rule_name, self.problem, self.source))


def _rebuild(rule_name: str, problem: str, source: str | None) -> ConditionError:
    return ConditionError(rule_name, problem, source=source)


# ---------------------------------------------------------------- syntax tree

Value: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Constant:
    value: Value
    text: str
    """The literal as written, for error messages."""


Operand: TypeAlias = Column | Constant
Operator: TypeAlias = TypingLiteral["=", "!=", "<", "<=", ">", ">="]


@dataclass(frozen=True)
class Comparison:
    op: Operator
    left: Operand
    right: Operand


@dataclass(frozen=True)
class InList:
    operand: Operand
    values: tuple[Constant, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    operand: Operand
    negated: bool


@dataclass(frozen=True)
class Truth:
    """An operand used on its own as a condition: a boolean column, `true` or `false`."""

    operand: Operand


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class And:
    operands: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Condition, ...]


Condition: TypeAlias = Comparison | InList | IsNull | Truth | Not | And | Or

# ---------------------------------------------------------------- parser

_GRAMMAR = r"""
    start: _or

    _or: or_ | _and
    or_: _and (_OR _and)+
    _and: and_ | _not
    and_: _not (_AND _not)+
    _not: not_ | predicate
    not_: _NOT _not

    ?predicate: _operand COMPARATOR _operand        -> comparison
              | _operand _IN _list                  -> in_list
              | _operand _NOT _IN _list             -> not_in_list
              | _operand _IS NULL                   -> is_null
              | _operand _IS _NOT NULL              -> is_not_null
              | _operand                            -> truth
              | "(" _or ")"

    _list: "(" _literal ("," _literal)* ")"
    _operand: column | _literal
    column: NAME | QUOTED_NAME
    _literal: STRING | NUMBER | TRUE | FALSE | NULL

    _OR.2: /or\b/i
    _AND.2: /and\b/i
    _NOT.2: /not\b/i
    _IN.2: /in\b/i
    _IS.2: /is\b/i
    NULL.2: /null\b/i
    TRUE.2: /true\b/i
    FALSE.2: /false\b/i

    COMPARATOR: /<=|>=|<>|!=|=|<|>/
    NAME: /[A-Za-z_][A-Za-z0-9_]*/
    QUOTED_NAME: /"(?:[^"]|"")+"/
    STRING: /'(?:[^']|'')*'/
    NUMBER: /-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/

    %import common.WS
    %ignore WS
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="basic", maybe_placeholders=False)

_INT64 = (-(2**63), 2**63 - 1)
_OPERATORS: dict[str, Operator] = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

_TOKEN_NAMES = {
    "NAME": "a column",
    "QUOTED_NAME": "a column",
    "STRING": "a value",
    "NUMBER": "a value",
    "TRUE": "a value",
    "FALSE": "a value",
    "NULL": "'null'",
    "COMPARATOR": "a comparison operator",
    "_OR": "'or'",
    "_AND": "'and'",
    "_NOT": "'not'",
    "_IN": "'in'",
    "_IS": "'is'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COMMA": "','",
    "$END": "the end of the condition",
}


_TOO_DEEP = "the condition is nested too deeply"


class _Problem(Exception):
    """A problem found while building the tree; becomes a ConditionError."""


class _ToTree(Transformer[Token, Condition]):
    """Turns the lark parse tree into the frozen syntax tree above."""

    def start(self, items: list[Condition]) -> Condition:
        return items[0]

    def or_(self, items: list[Condition]) -> Condition:
        return Or(tuple(items))

    def and_(self, items: list[Condition]) -> Condition:
        return And(tuple(items))

    def not_(self, items: list[Condition]) -> Condition:
        return Not(items[0])

    def comparison(self, items: list[object]) -> Condition:
        left, op, right = items
        assert isinstance(op, Token)
        return Comparison(_OPERATORS[op.value], _operand(left), _operand(right))

    def in_list(self, items: list[object]) -> Condition:
        return InList(_operand(items[0]), tuple(_constant(t) for t in items[1:]), negated=False)

    def not_in_list(self, items: list[object]) -> Condition:
        return InList(_operand(items[0]), tuple(_constant(t) for t in items[1:]), negated=True)

    def is_null(self, items: list[object]) -> Condition:
        return IsNull(_operand(items[0]), negated=False)

    def is_not_null(self, items: list[object]) -> Condition:
        return IsNull(_operand(items[0]), negated=True)

    def truth(self, items: list[object]) -> Condition:
        return Truth(_operand(items[0]))

    def column(self, items: list[Token]) -> Column:
        token = items[0]
        if token.type == "QUOTED_NAME":
            return Column(token.value[1:-1].replace('""', '"'))
        return Column(token.value)


def _operand(item: object) -> Operand:
    if isinstance(item, Column):
        return item
    assert isinstance(item, Token)
    return _constant(item)


def _constant(token: Token) -> Constant:
    text = token.value
    match token.type:
        case "STRING":
            return Constant(text[1:-1].replace("''", "'"), text)
        case "TRUE":
            return Constant(True, text)
        case "FALSE":
            return Constant(False, text)
        case "NULL":
            return Constant(None, text)
    if re.fullmatch(r"-?[0-9]+", text):
        number = int(text)
        if not _INT64[0] <= number <= _INT64[1]:
            raise _Problem(f"number {text} is out of range")
        return Constant(number, text)
    return Constant(float(text), text)


def parse_condition(text: str, rule_name: str = "?") -> Condition:
    """Parse a condition without looking at any data (checks a job file early); errors name `rule_name`."""
    if not text.strip():
        raise ConditionError(rule_name, "the condition is empty")
    try:
        return _ToTree().transform(_PARSER.parse(text))
    except UnexpectedInput as error:
        raise ConditionError(rule_name, _syntax_message(text, error)) from None
    except VisitError as error:
        if isinstance(error.orig_exc, _Problem):
            raise ConditionError(rule_name, str(error.orig_exc)) from None
        raise
    except RecursionError:
        raise ConditionError(rule_name, _TOO_DEEP) from None


def _syntax_message(text: str, error: UnexpectedInput) -> str:
    if isinstance(error, UnexpectedToken) and error.token.type == "$END":
        return f"syntax error at the end: the condition is incomplete, expected {_expected(error.expected)}"
    where = f"column {error.column}" if "\n" not in text else f"line {error.line}, column {error.column}"
    if isinstance(error, UnexpectedCharacters):
        return f"syntax error at {where}: unexpected character {text[error.pos_in_stream]!r}"
    if isinstance(error, UnexpectedToken):
        return f"syntax error at {where}: unexpected {error.token.value!r}, expected {_expected(error.expected)}"
    return f"syntax error at {where}"


def _expected(names: set[str]) -> str:
    wanted = sorted({_TOKEN_NAMES.get(name, name) for name in names})
    if "a value" in wanted:
        wanted = [w for w in wanted if w != "'null'"]
    return wanted[0] if len(wanted) == 1 else ", ".join(wanted[:-1]) + " or " + wanted[-1]


# ---------------------------------------------------------------- compiler

Kind: TypeAlias = TypingLiteral["string", "number", "boolean", "date", "timestamp", "null"]


@dataclass(frozen=True)
class _Typed:
    expr: pl.Expr
    kind: Kind
    label: str
    dtype: pl.DataType | None = None
    """The column's dtype (None for a constant)."""
    value: Value | date | datetime = None
    """The constant's value (for a constant)."""


def condition_schema(people: pl.DataFrame) -> dict[str, pl.DataType]:
    """The schema to compile against: a column holding only nulls is typed `pl.Null`.

    SPEC §7.7: an all-null column never matches and raises no type error,
    whatever dtype the loader gave it. An empty frame keeps its dtypes, so that
    type mismatches are still reported.
    """
    if people.height == 0:
        return dict(people.schema)
    return {
        name: pl.Null() if people[name].null_count() == people.height else dtype
        for name, dtype in people.schema.items()
    }


def compile_condition(rule_name: str, text: str, schema: Mapping[str, pl.DataType]) -> pl.Expr:
    """Compile a condition into a Boolean expression over the people columns in `schema`.

    The expression is True where the condition is true and False where it is
    false or unknown (it never yields null), so it can be used directly in
    `filter` or combined with `|`. Its output name is `rule_name`.
    A column typed `pl.Null` is all null (see `condition_schema`).
    """
    condition = parse_condition(text, rule_name)
    try:
        expr = _Compiler(schema).condition(condition)
    except _Problem as problem:
        raise ConditionError(rule_name, str(problem)) from None
    except RecursionError:
        raise ConditionError(rule_name, _TOO_DEEP) from None
    if not expr.meta.root_names():
        expr = pl.repeat(expr, pl.len())
    return expr.fill_null(False).alias(rule_name)


def _unknown(*operands: _Typed) -> pl.Expr:
    """Unknown on every row of an all-null column, with no type check (SPEC §7.7)."""
    column = next(o.expr for o in operands if o.kind == "null")
    return column.is_null() & pl.lit(None, dtype=pl.Boolean)


class _Compiler:
    def __init__(self, schema: Mapping[str, pl.DataType]) -> None:
        self.schema = schema

    def condition(self, node: Condition) -> pl.Expr:
        match node:
            case Or(operands):
                return reduce(operator.or_, map(self.condition, operands))
            case And(operands):
                return reduce(operator.and_, map(self.condition, operands))
            case Not(operand):
                return ~self.condition(operand)
            case Comparison(op, left, right):
                return self.comparison(op, self.operand(left), self.operand(right))
            case InList(operand, values, negated):
                result = self.in_list(self.operand(operand), values)
                return ~result if negated else result
            case IsNull(operand, negated):
                typed = self.operand(operand)
                if typed.kind == "null":  # §7.7: an all-null column never matches a rule, `is null` included
                    return _unknown(typed)
                return typed.expr.is_not_null() if negated else typed.expr.is_null()
            case Truth(operand):
                return self.truth(self.operand(operand))
        raise AssertionError(node)

    def operand(self, node: Operand) -> _Typed:
        if isinstance(node, Constant):
            return _constant_operand(node)
        if node.name not in self.schema:
            raise _Problem(f"unknown column '{node.name}'{_suggestion(node.name, self.schema)}")
        dtype = self.schema[node.name]
        kind = _kind(dtype)
        if kind is None:
            raise _Problem(f"column '{node.name}' has type {dtype}, which conditions cannot use")
        expr = pl.col(node.name)
        if isinstance(dtype, pl.Categorical | pl.Enum):
            expr = expr.cast(pl.String)
        return _Typed(expr, kind, node.name, dtype)

    def comparison(self, op: Operator, left: _Typed, right: _Typed) -> pl.Expr:
        _refuse_null_constant(left, right)
        if "null" in (left.kind, right.kind):
            return _unknown(left, right)
        left, right = _coerce(left, right), _coerce(right, left)
        if left.kind != right.kind:
            raise _Problem(f"cannot compare {_describe(left)} with {_describe(right)}")
        a, b = left.expr, right.expr
        match op:
            case "=":
                return a == b
            case "!=":
                return a != b
            case "<":
                return a < b
            case "<=":
                return a <= b
            case ">":
                return a > b
            case ">=":
                return a >= b
        raise AssertionError(op)

    def in_list(self, operand: _Typed, values: tuple[Constant, ...]) -> pl.Expr:
        typed = [_constant_operand(value) for value in values]
        for value in typed:
            _refuse_null_constant(operand, value)
        if operand.kind == "null":
            return _unknown(operand)
        typed = [_coerce(value, operand) for value in typed]
        for value in typed:
            if value.kind != operand.kind:
                raise _Problem(f"cannot compare {_describe(operand)} with {_describe(value)}")
        items = [value.value for value in typed]
        dtype, expr = _list_dtype(operand, items)
        return expr.is_in(pl.Series(items, dtype=dtype).implode())

    def truth(self, operand: _Typed) -> pl.Expr:
        if operand.kind == "null":
            return _unknown(operand)
        if operand.kind != "boolean":
            raise _Problem(f"{_describe(operand)} is not a condition; compare it with something")
        return operand.expr


def _kind(dtype: pl.DataType) -> Kind | None:
    if dtype == pl.Null:
        return "null"
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "string"
    if dtype == pl.Boolean:
        return "boolean"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    if dtype.is_numeric():
        return "number"
    return None


def _constant_operand(node: Constant) -> _Typed:
    value = node.value
    kind: Kind
    if value is None:
        kind = "null"
    elif isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, str):
        kind = "string"
    else:
        kind = "number"
    return _Typed(pl.lit(value), kind, node.text, value=value)


def _refuse_null_constant(*operands: _Typed) -> None:
    if any(o.kind == "null" and o.dtype is None for o in operands):
        raise _Problem("a comparison with null is never true; use 'is null' or 'is not null'")


def _coerce(operand: _Typed, other: _Typed) -> _Typed:
    """A string constant compared with a date or timestamp column is read as a date or timestamp."""
    if operand.dtype is not None or operand.kind != "string" or other.kind not in ("date", "timestamp"):
        return operand
    text = operand.value
    assert isinstance(text, str)
    if other.kind == "date":
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise _Problem(f"cannot compare {_describe(other)} with {operand.label}: expected a date 'YYYY-MM-DD'")
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise _Problem(f"{operand.label} is not a valid date") from None
        return _Typed(pl.lit(day), "date", operand.label, value=day)
    instant = _parse_timestamp(text)
    if instant is None:
        raise _Problem(
            f"cannot compare {_describe(other)} with {operand.label}: "
            "expected a date 'YYYY-MM-DD' or an ISO-8601 timestamp"
        )
    assert other.dtype is not None
    if getattr(other.dtype, "time_zone", None) is None:
        instant = instant.replace(tzinfo=None)
    return _Typed(pl.lit(instant).cast(other.dtype), "timestamp", operand.label, value=instant)


def _parse_timestamp(text: str) -> datetime | None:
    """ISO-8601 date or date-time; an offset is converted to UTC, a naive value is UTC (SPEC §1)."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].+)?", text):
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc)


def _list_dtype(operand: _Typed, items: list[object]) -> tuple[pl.DataType, pl.Expr]:
    """One dtype for the operand and the list: Polars' `is_in` does not coerce (2.x)."""
    if operand.kind == "number":
        integral = all(isinstance(v, int) for v in items)
        if integral and (operand.dtype is None or operand.dtype.is_integer()):
            return pl.Int64(), operand.expr.cast(pl.Int64)
        return pl.Float64(), operand.expr.cast(pl.Float64)
    if operand.kind == "string":
        return pl.String(), operand.expr
    if operand.kind == "timestamp" and operand.dtype is not None:
        return operand.dtype, operand.expr
    dtype = {"boolean": pl.Boolean(), "date": pl.Date()}[operand.kind]
    return dtype, operand.expr


def _describe(operand: _Typed) -> str:
    return f"{operand.label} ({operand.kind})"


def _suggestion(name: str, schema: Mapping[str, pl.DataType]) -> str:
    close = difflib.get_close_matches(name, list(schema), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""

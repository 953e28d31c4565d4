"""The registry of text-encoder kinds, and the spec strings that name one with its options.

A spec is ``KIND[:SOURCE][,NAME=VALUE ...]``: ``learned,dim=128,min_count=2``,
``hf:bert-base-uncased,max_length=48``, ``clip:openai/clip-vit-base-patch32,eof_padding=false``. The options
start at the first comma that is followed by ``NAME=`` (a Python identifier and ``=``), and each option's value
runs to the next such comma; a source may therefore hold commas, ``=`` and ``:`` (``hf:C:\\models\\bert``,
``clip:https://host/clip?rev=main``, ``hf:/data/bert,v2``), unless a comma in it is followed by ``NAME=``.

Each kind is a :class:`TextEncoderKind`: its name, the form of its source, a summary, the options it takes
(:class:`TextOption`, with type and default, usually read off the encoder's constructor by
:func:`options_from_signature`), a builder from a parsed spec and one from ``encoder.config()``.
:func:`register_text_encoder` adds one; the validation messages and the help text of ``lvseg train`` are
generated from what is registered. The built-in kinds are registered by :mod:`lvseg.text.kinds` (importing
:mod:`lvseg.text` registers them).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lvseg.errors import LvsegError
from lvseg.text.base import TextEncoder

#: Types an option can have on the command line.
OPTION_TYPES: tuple[type, ...] = (bool, int, float, str)
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
#: Where the options of a spec start: a comma followed by ``NAME=``.
_OPTION_START = re.compile(r",\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TextOption:
    """One option of a text-encoder kind: ``name=value`` in a spec or ``--text-option name=value``.

    ``type`` is bool, int, float or str; ``default`` is what the encoder uses when it is not given (None:
    unset); ``choices`` limit a str option; ``minimum`` bounds a number; ``recorded`` says whether
    ``encoder.config()`` keeps it (a run-time setting such as a cache folder is not recorded: a checkpoint
    rebuilds the encoder with the default).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    recorded: bool = True

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"text option {self.name!r}: type {self.type!r} is not one of bool, int, float, str")

    def describe(self) -> str:
        """``name=default`` (or ``name=a|b``, ``name`` without a default), as the help lists it."""
        if self.choices:
            return f"{self.name}={'|'.join(self.choices)}"
        if self.default is None:
            return f"{self.name}=<{self.type.__name__}>"
        return f"{self.name}={format_value(self.default)}"


@dataclass(frozen=True)
class TextEncoderSpec:
    """A parsed spec: the kind's name, its source (None for kinds without one) and typed options."""

    kind: str
    source: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """The spec as a string that parses back to this spec (see :func:`parse_text_encoder_spec`)."""
        head = self.kind if self.source is None else f"{self.kind}:{self.source}"
        return ",".join([head, *(f"{name}={format_value(value)}" for name, value in self.options.items())])


#: ``build(spec, texts)``: the encoder a parsed spec names (``texts``: the training reports, or None).
SpecBuilder = Callable[[TextEncoderSpec, Sequence[str] | None], TextEncoder]
#: ``from_config(config, runtime_options)``: the encoder ``encoder.config()`` describes.
ConfigBuilder = Callable[[Mapping[str, Any], Mapping[str, Any]], TextEncoder]


@dataclass(frozen=True)
class TextEncoderKind:
    """One kind of text encoder, as the registry holds it.

    ``source``: the placeholder of the part after ``name:`` (e.g. ``"<id or path>"``), None when the kind takes
    none; ``default_source``: what a bare ``name`` means (None: the source is required). ``aliases`` are spec
    names that stand for ``name:<source>`` (``minilm`` -> ``hf:minilm``), with a few words each. ``config_type``
    is the ``"type"`` its ``config()`` records (default: ``name``); ``runtime_options`` are the ``from_config``
    settings that are not part of a config (e.g. ``cache``).
    """

    name: str
    summary: str
    build: SpecBuilder
    from_config: ConfigBuilder
    options: tuple[TextOption, ...] = ()
    source: str | None = None
    default_source: str | None = None
    aliases: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    config_type: str | None = None
    runtime_options: tuple[str, ...] = ()
    #: ``unloaded_config(spec, max_length)``: the config of the frozen pretrained encoder a spec names, written
    #: without loading it (an importer writes checkpoints whose encoder weights are not stored); None: not a
    #: frozen pretrained kind.
    unloaded_config: Callable[[TextEncoderSpec, int], dict[str, Any]] | None = None
    #: The config field naming where a frozen pretrained encoder's weights are reloaded from (None: stored).
    pretrained_source_field: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name.replace("-", "_")):
            raise ValueError(f"text encoder kind name {self.name!r} must be letters, digits, '-' or '_'")
        names = [option.name for option in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"text encoder kind {self.name!r} declares an option twice: {names}")

    @property
    def type_name(self) -> str:
        """The ``"type"`` of this kind's ``config()``."""
        return self.config_type or self.name

    @property
    def form(self) -> str:
        """How a spec names this kind: ``learned``, ``hf:<model id or local path>``, ``clip[:<id or path>]``."""
        if self.source is None:
            return self.name
        if self.default_source is not None:
            return f"{self.name}[:{self.source}]"
        return f"{self.name}:{self.source}"

    def option(self, name: str) -> TextOption | None:
        return next((option for option in self.options if option.name == name), None)

    @property
    def option_names(self) -> list[str]:
        return sorted(option.name for option in self.options)


_KINDS: dict[str, TextEncoderKind] = {}


def register_text_encoder(kind: TextEncoderKind, *, replace: bool = False) -> TextEncoderKind:
    """Add ``kind`` to the registry (``replace=True`` swaps a kind of the same name); returns it.

    Its name, aliases and config type must not be taken by another kind."""
    others = {name: other for name, other in _KINDS.items() if name != kind.name or not replace}
    if kind.name in others:
        raise LvsegError(f"a text encoder kind {kind.name!r} is already registered")
    taken = {alias for other in others.values() for alias in (other.name, *other.aliases)}
    clashes = sorted(taken & {kind.name, *kind.aliases})
    if clashes:
        raise LvsegError(f"text encoder kind {kind.name!r}: the name(s) {', '.join(clashes)} are taken")
    if any(other.type_name == kind.type_name for other in others.values()):
        raise LvsegError(f"text encoder kind {kind.name!r}: config type {kind.type_name!r} is taken")
    _KINDS[kind.name] = kind
    return kind


def unregister_text_encoder(name: str) -> None:
    """Remove the kind ``name`` (tests and plug-ins that replace a kind); an unknown name is an error."""
    if name not in _KINDS:
        raise LvsegError(f"no text encoder kind {name!r} is registered")
    del _KINDS[name]


def text_encoder_kinds() -> dict[str, TextEncoderKind]:
    """The registered kinds by name, in the order they were registered."""
    return dict(_KINDS)


def kind_for_config(config: Mapping[str, Any]) -> TextEncoderKind:
    """The kind whose ``config()`` records ``config["type"]``."""
    kind_type = config.get("type") if isinstance(config, Mapping) else None
    for kind in _KINDS.values():
        if kind.type_name == kind_type:
            return kind
    expected = join_choices([repr(kind.type_name) for kind in _KINDS.values()], "or")
    raise LvsegError(f"text encoder config has unknown type {kind_type!r}; expected {expected}")


# ------------------------------------------------------------------------------------------- values


def join_choices(items: Sequence[str], word: str) -> str:
    """``a, b or c`` (``word`` = "or"/"and")."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def format_value(value: Any) -> str:
    """A typed option value as a spec writes it (bools as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _expected(option: TextOption) -> str:
    if option.type is bool:
        return "true or false"
    if option.choices:
        return join_choices(list(option.choices), "or")
    return {int: "an integer", float: "a number", str: "text"}[option.type]


def parse_option_value(option: TextOption, value: Any) -> Any:
    """``value`` (text from a spec or the command line, or a Python value) as ``option``'s type.

    Raises :class:`LvsegError` ``option NAME=VALUE: expected ...`` when it is not one."""
    problem = LvsegError(f"option {option.name}={format_value(value)}: expected {_expected(option)}")
    if isinstance(value, str):
        parsed = _parse_text(option, value.strip(), problem)
    elif option.type is bool:
        if not isinstance(value, bool):
            raise problem
        parsed = value
    elif option.type in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if option.type is int and not float(value).is_integer():
            raise problem
        parsed = option.type(value)
    elif option.type is str and isinstance(value, os.PathLike):
        parsed = value  # a folder given from Python stays a path
    else:
        raise problem
    _check_bounds(option, parsed)
    return parsed


def _parse_text(option: TextOption, text: str, problem: LvsegError) -> Any:
    if option.type is bool:
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise problem
    if option.type is int:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise problem
        return int(text)
    if option.type is float:
        try:
            number = float(text)
        except ValueError:
            raise problem from None
        if not math.isfinite(number):
            raise problem
        return number
    return text


def _check_bounds(option: TextOption, value: Any) -> None:
    if option.choices and value not in option.choices:
        raise LvsegError(f"option {option.name}={format_value(value)}: expected {_expected(option)}")
    if option.minimum is not None and isinstance(value, (int, float)) and value < option.minimum:
        raise LvsegError(f"option {option.name}={format_value(value)}: expected a value >= {option.minimum:g}")


# ------------------------------------------------------------------------------------------- specs


def split_spec(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """``"clip:x,eof_padding=false"`` -> ``("clip:x", [("eof_padding", "false")])``: the head (kind and source)
    and the ``NAME=VALUE`` items, in order. Options start at the first comma followed by ``NAME=``."""
    matches = list(_OPTION_START.finditer(spec))
    if not matches:
        return spec.strip(), []
    items = []
    for match, following in zip(matches, [*matches[1:], None]):
        end = following.start() if following is not None else len(spec)
        items.append((match.group(1), spec[match.end() : end].strip()))
    return spec[: matches[0].start()].strip(), items


def _resolve_kind(head: str, problems: list[str]) -> tuple[TextEncoderKind | None, str | None]:
    """The kind and source a spec's head names (problems appended when it names none)."""
    for kind in _KINDS.values():
        if head in kind.aliases:
            return kind, kind.aliases[head][0]
    name, colon, source = head.partition(":")
    name = name.strip()
    named = _KINDS.get(name)
    if named is None and not colon and "," in name:  # "learned,dim": a kind, then a malformed option
        name, _, rest = name.partition(",")
        if name.strip() in _KINDS:
            problems.append(f"text encoder {name.strip()!r}: {rest.strip()!r} is not NAME=VALUE")
            return None, None
    if named is None:
        problems.append(f"unknown text encoder {head!r}; expected {expected_specs()}")
        return None, None
    kind = named
    source = source.strip()
    if kind.source is None:
        if colon:
            problems.append(f"text encoder {kind.name!r} takes no ':<source>' part; got {head!r}")
        return kind, None
    if not source:
        if kind.default_source is None:
            problems.append(f"text encoder {head!r} names no model; expected {kind.form!r}")
            return kind, None
        source = kind.default_source
    return kind, source


def _typed_options(kind: TextEncoderKind, items: Iterable[tuple[str, Any, str]], problems: list[str]) -> dict[str, Any]:
    """``(name, value, where)`` items -> {name: typed value}; unknown names, bad values and names given twice
    appended to ``problems``."""
    options: dict[str, Any] = {}
    given: dict[str, tuple[Any, str]] = {}
    for name, value, where in items:
        option = kind.option(name)
        if option is None:
            takes = ", ".join(kind.option_names) or "no options"
            problems.append(f"unknown option {name!r} for text encoder {kind.name!r}; it takes {takes}")
            continue
        if name in given:
            first_value, first_where = given[name]
            problems.append(
                f"option {name} is given twice: {name}={format_value(first_value)} in {first_where} and "
                f"{name}={format_value(value)} in {where}"
            )
            continue
        given[name] = (value, where)
        try:
            options[name] = parse_option_value(option, value)
        except LvsegError as error:
            problems.append(str(error))
    return options


def _spec_and_problems(
    spec: str, extra: Mapping[str, Any] | None, extra_label: str
) -> tuple[TextEncoderSpec | None, list[str]]:
    problems: list[str] = []
    if not isinstance(spec, str):
        return None, [f"a text encoder spec must be text such as {expected_specs()}; got {spec!r}"]
    head, items = split_spec(spec)
    kind, source = _resolve_kind(head, problems)
    if kind is None:
        return None, problems
    where = repr(spec.strip())
    named = [(name, value, where) for name, value in items]
    named += [(name, value, extra_label) for name, value in (extra or {}).items()]
    options = _typed_options(kind, named, problems)
    return TextEncoderSpec(kind.name, source, options), problems


def parse_text_encoder_spec(
    spec: str, extra: Mapping[str, Any] | None = None, *, extra_label: str = "the options given"
) -> TextEncoderSpec:
    """Parse ``KIND[:SOURCE][,NAME=VALUE ...]`` plus ``extra`` options (e.g. from ``--text-option``, named
    ``extra_label`` in messages) into a :class:`TextEncoderSpec` with typed values.

    Raises one :class:`LvsegError` listing every problem: an unknown kind, an unknown option (with the options
    the kind takes), a value of the wrong type, an option given twice (naming both places)."""
    parsed, problems = _spec_and_problems(spec, extra, extra_label)
    if problems or parsed is None:
        raise LvsegError("; ".join(problems))
    return parsed


def text_encoder_problems(
    spec: str, extra: Mapping[str, Any] | None = None, *, extra_label: str = "the options given"
) -> list[str]:
    """What :func:`parse_text_encoder_spec` would refuse, as a list (empty when the spec is fine)."""
    return _spec_and_problems(spec, extra, extra_label)[1]


def with_text_options(spec: str, options: Mapping[str, Any], *, label: str = "--text-option") -> str:
    """``spec`` with ``options`` merged into its own (an option in both is an error naming both), as one spec
    string; ``spec`` unchanged when ``options`` is empty."""
    if not options:
        return spec
    merged = parse_text_encoder_spec(spec, options, extra_label=label)
    text = merged.format()
    again, problems = _spec_and_problems(text, None, label)
    if problems or again is None or again.options != merged.options:  # a value holding ",NAME=" cannot be written
        raise LvsegError(f"{label}: a value holding ',NAME=' cannot be part of a text encoder spec: {text!r}")
    return text


def parse_option_items(items: Sequence[str] | None, flag: str = "--text-option") -> dict[str, str]:
    """``["eof_padding=false", ...]`` (a repeatable ``NAME=VALUE`` flag) -> {name: text}; every malformed item
    and every name given twice is named at once."""
    options: dict[str, str] = {}
    problems = []
    for item in items or []:
        name, separator, value = item.partition("=")
        name = name.strip()
        if not separator or not _NAME.fullmatch(name):
            problems.append(f"{flag} {item!r} is not NAME=VALUE")
        elif name in options:
            problems.append(f"{flag} {name} is given twice: {name}={options[name]} and {name}={value.strip()}")
        else:
            options[name] = value.strip()
    if problems:
        raise LvsegError("; ".join(problems))
    return options


# ------------------------------------------------------------------------------------------- help


def expected_specs() -> str:
    """The registered forms, for messages: ``'learned' or 'hf:<model id or local path>' or ...``."""
    forms = []
    for kind in _KINDS.values():
        forms.append(repr(kind.form))
        forms += [repr(alias) for alias in kind.aliases]
    return " or ".join(forms)


def describe_kind(kind: TextEncoderKind) -> str:
    """One line: ``form: summary (default ...); alias = ...; options a=1, b=true``."""
    return "; ".join([_kind_summary(kind), *_option_lines(kind)])


def _kind_summary(kind: TextEncoderKind) -> str:
    text = f"{kind.form}: {kind.summary}"
    if kind.default_source is not None:
        text += f" (default {kind.default_source})"
    aliases = [f"{alias} = {kind.name}:{source} ({words})" for alias, (source, words) in kind.aliases.items()]
    return "; ".join([text, *aliases])


def _option_lines(kind: TextEncoderKind) -> list[str]:
    return [f"options {', '.join(option.describe() for option in kind.options)}"] if kind.options else []


def text_encoder_help(width: int = 78) -> str:
    """The registered kinds and their options, one paragraph each (the epilog of ``lvseg train --help``),
    wrapped to ``width``; paragraphs start with click's ``\\b`` marker so that they are printed as written."""
    import textwrap

    paragraphs = [
        "Text encoders: --text-encoder KIND[:SOURCE][,NAME=VALUE...]; --text-option NAME=VALUE adds an "
        "option (repeatable). Options start at the first comma followed by NAME=. Values: true/false/1/0/"
        "yes/no, integers, numbers or text."
    ]
    for kind in _KINDS.values():
        lines = textwrap.wrap(_kind_summary(kind), width, subsequent_indent="    ", break_on_hyphens=False)
        for option_line in _option_lines(kind):
            lines += textwrap.wrap(
                option_line.replace("options ", "options: ", 1),
                width,
                initial_indent="    ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
        paragraphs.append("\b\n" + "\n".join(lines))
    return "\n\n".join(paragraphs)


# ------------------------------------------------------------------------------------------- signatures


def _option_type(annotation: Any) -> type | None:
    """bool/int/float/str for an annotation (``X | None`` -> X; a union holding str -> str), else None."""
    if annotation in OPTION_TYPES:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return _option_type(members[0])
        if str in members:
            return str
    return None


def options_from_signature(
    function: Callable[..., Any],
    *,
    skip: Iterable[str] = (),
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, tuple[str, ...]] | None = None,
    minimum: Mapping[str, float] | None = None,
    not_recorded: Iterable[str] = (),
) -> tuple[TextOption, ...]:
    """The options of a constructor (or factory): every parameter with a default, in order, typed by its
    annotation, except ``skip`` (e.g. a source or a Python-only dict). A parameter whose type the command line
    cannot give is a ``TypeError``, so a new constructor option is either typed or skipped on purpose."""
    hints = typing.get_type_hints(function)
    skipped, unrecorded = set(skip), set(not_recorded)
    options = []
    for name, parameter in inspect.signature(function).parameters.items():
        if name in skipped or name in ("self", "cls") or parameter.default is inspect.Parameter.empty:
            continue
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        option_type = _option_type(hints.get(name))
        if option_type is None:
            raise TypeError(
                f"{getattr(function, '__qualname__', function)}: option {name!r} has the type "
                f"{hints.get(name)!r}, which a spec cannot give; skip it or give it bool/int/float/str"
            )
        options.append(
            TextOption(
                name,
                option_type,
                parameter.default,
                help=(help or {}).get(name, ""),
                choices=(choices or {}).get(name),
                minimum=(minimum or {}).get(name),
                recorded=name not in unrecorded,
            )
        )
    return tuple(options)

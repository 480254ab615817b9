"""Question templates: load and check config/questions.yaml, give questions by role and group.

A template is a question with a class placeholder ``{}`` ("What kind of {} is in the photo?"). Each
belongs to a declared group (fine, alias, object, scene in the default file) and each group has a
role: ``fg`` answers describe the object, ``bg`` answers its surroundings (method.md 2.2, 3).

The file is validated against ``workflow/schemas/questions.schema.yaml`` (JSON Schema draft 2020-12)
and then by checks a schema cannot express; every error names the template (id and text) and says
what is expected, for example::

    questions file config/questions.yaml: template 'kind' ("What kind of is in the photo?"):
    the text must contain the class placeholder {} exactly once, found 0
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaclims.config import SCHEMA_DIR, ConfigError, load_yaml

PLACEHOLDER = "{}"
ROLES = ("fg", "bg")
SCHEMA_PATH = SCHEMA_DIR / "questions.schema.yaml"


class QuestionsError(ConfigError):
    """The question templates are invalid; the message names the template and the expectation."""


@dataclass(frozen=True)
class Template:
    """One question template. ``digest`` changes exactly when id, group, role or text changes."""

    id: str
    group: str
    role: str
    text: str

    @property
    def digest(self) -> str:
        payload = json.dumps([self.id, self.group, self.role, self.text], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def question(self, class_text: str) -> str:
        """The question about ``class_text`` (plain substitution: class names may hold braces)."""
        return self.text.replace(PLACEHOLDER, class_text)

    def describe(self) -> str:
        return f"template {self.id!r} ({self.text!r})"


@dataclass(frozen=True)
class Group:
    name: str
    role: str
    description: str = ""


class QuestionSet:
    """The validated templates, in file order, with their groups.

    ``templates`` keeps the file order, which is the order of answers and corpus rows.
    """

    def __init__(self, templates: Sequence[Template], groups: Mapping[str, Group],
                 source: str = "<questions>") -> None:
        self.templates: tuple[Template, ...] = tuple(templates)
        self.groups: dict[str, Group] = dict(groups)
        self.source = source
        self._by_id = {t.id: t for t in self.templates}

    # ------------------------------------------------------------------ lookup
    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self) -> Iterator[Template]:
        return iter(self.templates)

    def __getitem__(self, template_id: str) -> Template:
        try:
            return self._by_id[template_id]
        except KeyError:
            raise KeyError(
                f"{self.source}: no template with id {template_id!r}; ids: {self.ids}"
            ) from None

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.templates]

    def by_role(self, role: str) -> tuple[Template, ...]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {list(ROLES)}")
        return tuple(t for t in self.templates if t.role == role)

    def by_group(self, group: str) -> tuple[Template, ...]:
        if group not in self.groups:
            raise ValueError(
                f"{self.source}: unknown group {group!r}; declared groups: {list(self.groups)}"
            )
        return tuple(t for t in self.templates if t.group == group)

    @property
    def fg(self) -> tuple[Template, ...]:
        return self.by_role("fg")

    @property
    def bg(self) -> tuple[Template, ...]:
        return self.by_role("bg")

    def groups_of_role(self, role: str) -> list[str]:
        return [g.name for g in self.groups.values() if g.role == role]

    def question(self, template_id: str, class_text: str) -> str:
        return self[template_id].question(class_text)

    def questions_for(self, class_text: str) -> list[tuple[Template, str]]:
        """Every template with its question about ``class_text``, in template order."""
        return [(t, t.question(class_text)) for t in self.templates]

    def template_order(self) -> dict[str, int]:
        """Template id -> position, for sorting tables in template order."""
        return {t.id: i for i, t in enumerate(self.templates)}

    # ------------------------------------------------------------------ identity
    @property
    def digest(self) -> str:
        """Digest of the whole set (templates in order and group roles)."""
        roles = sorted((g.name, g.role) for g in self.groups.values())
        payload = json.dumps([[t.digest for t in self.templates], roles])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def digests(self) -> dict[str, str]:
        """Template id -> per-template digest."""
        return {t.id: t.digest for t in self.templates}

    def to_dict(self) -> dict[str, Any]:
        """The set in the file's layout (round-trips through :func:`questions_from_dict`)."""
        return {
            "groups": {
                g.name: {"role": g.role} | ({"description": g.description} if g.description else {})
                for g in self.groups.values()
            },
            "templates": [{"id": t.id, "group": t.group, "text": t.text} for t in self.templates],
        }

    def select(self, groups: Iterable[str]) -> QuestionSet:
        """A set with only the templates of ``groups`` (checked to be declared)."""
        wanted = list(groups)
        for g in wanted:
            self.by_group(g)
        return QuestionSet(
            [t for t in self.templates if t.group in wanted],
            {g: self.groups[g] for g in self.groups if g in wanted},
            source=f"{self.source}[{','.join(wanted)}]",
        )

    def __repr__(self) -> str:
        counts = {g: len(self.by_group(g)) for g in self.groups}
        return f"QuestionSet({self.source}, {counts})"


# ---------------------------------------------------------------------- loading


def load_questions(path: str | Path) -> QuestionSet:
    """Load, validate and check a questions file; :class:`QuestionsError` names any problem."""
    try:
        data = load_yaml(path)
    except ConfigError as err:
        raise QuestionsError(str(err)) from err
    return questions_from_dict(data, source=str(path))


def questions_from_dict(data: Any, source: str = "<questions>") -> QuestionSet:
    """Validate ``data`` (the parsed YAML) with the schema and the semantic checks."""
    _check_schema(data, source)
    groups = {
        name: Group(name, spec["role"], spec.get("description", ""))
        for name, spec in data["groups"].items()
    }
    problems: list[str] = []
    templates: list[Template] = []
    seen_ids: dict[str, Template] = {}
    seen_texts: dict[str, Template] = {}
    for raw in data["templates"]:
        group = groups.get(raw["group"])
        t = Template(raw["id"], raw["group"], group.role if group else "?", raw["text"])
        n = t.text.count(PLACEHOLDER)
        rest = t.text.replace(PLACEHOLDER, "")
        stray = rest.count("{") + rest.count("}")
        if n != 1:
            problems.append(
                f"{t.describe()}: the text must contain the class placeholder {{}} exactly once, "
                f"found {n}"
            )
        elif stray:
            problems.append(
                f"{t.describe()}: the text may hold no brace other than the class placeholder {{}}"
            )
        if group is None:
            problems.append(
                f"{t.describe()}: unknown group {t.group!r}; expected one of the declared groups "
                f"{list(groups)}"
            )
        if t.id in seen_ids:
            problems.append(
                f"{t.describe()}: duplicate id; {seen_ids[t.id].describe()} already uses it "
                "(ids must be unique)"
            )
        seen_ids.setdefault(t.id, t)
        key = " ".join(t.text.split()).lower()
        if key in seen_texts:
            problems.append(
                f"{t.describe()}: duplicate text; {seen_texts[key].describe()} asks the same "
                "question (texts must be unique, ignoring case and spacing)"
            )
        seen_texts.setdefault(key, t)
        templates.append(t)
    for g in groups.values():
        if not any(t.group == g.name for t in templates):
            problems.append(
                f"group {g.name!r} (role {g.role}) has no template; expected at least one, or "
                "remove the group from `groups`"
            )
    for role in ROLES:
        if not any(g.role == role for g in groups.values()):
            problems.append(f"no group has role {role!r}; expected at least one {role} group")
        elif not any(t.role == role for t in templates):
            problems.append(f"no template has role {role!r}; expected at least one")
    if problems:
        raise QuestionsError(
            f"questions file {source}: invalid question templates:\n  " + "\n  ".join(problems)
        )
    return QuestionSet(templates, groups, source=source)


def _check_schema(data: Any, source: str) -> None:
    from jsonschema import Draft202012Validator

    schema = load_yaml(SCHEMA_PATH)
    Draft202012Validator.check_schema(schema)
    errors = sorted(
        Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path)
    )
    if not errors:
        return
    lines = [_schema_message(err, data) for err in errors]
    raise QuestionsError(
        f"questions file {source}: does not match workflow/schemas/questions.schema.yaml:\n  "
        + "\n  ".join(lines)
    )


def _schema_message(err: Any, data: Any) -> str:
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path) or "<root>"
    # Name the template (id and text) when the error sits inside one.
    if len(path) >= 2 and path[0] == "templates" and isinstance(data, Mapping):
        items = data.get("templates")
        if isinstance(items, list) and isinstance(path[1], int) and path[1] < len(items):
            item = items[path[1]]
            if isinstance(item, Mapping):
                where = (
                    f"template #{path[1] + 1} (id {item.get('id')!r}, text {item.get('text')!r})"
                    + (f" key {'.'.join(str(p) for p in path[2:])!r}" if path[2:] else "")
                )
    v, value = err.validator, err.validator_value
    if v == "required":
        have = err.instance if isinstance(err.instance, Mapping) else {}
        missing = [k for k in value if k not in have]
        return f"{where}: missing required key(s) {missing}"
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        have = err.instance if isinstance(err.instance, Mapping) else {}
        unknown = sorted(set(have) - set(allowed))
        return f"{where}: unknown key(s) {unknown}; allowed: {allowed}"
    if v == "enum":
        return f"{where}: expected one of {list(value)}, got {err.instance!r}"
    if v == "type":
        return f"{where}: expected a value of type {value}, got {err.instance!r}"
    if v == "pattern":
        return f"{where}: expected a string matching {value!r}, got {err.instance!r}"
    if v in ("minItems", "minProperties", "minLength"):
        return f"{where}: {err.message}"
    return f"{where}: {err.message}"

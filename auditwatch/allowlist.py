"""Allow-list: benign fileless executions to suppress, matched on facts an attacker cannot pick.

An ``EntrySpec`` is one entry as written in the configuration; ``Allowlist.from_config`` compiles
every entry into an ``Entry`` (globs and regexes turned into compiled patterns) once, at load time.
Matching is pure: no file, socket or clock. The sha256 of the executed image is the one fact that
needs I/O; the caller hands ``match`` a callable that computes it (from ``/proc/PID/exe``) and that
is called at most once, only when an entry asks for it and every cheaper field already matched.

Rules:
- An entry applies only when ALL its fields match. An entry without any match field is an error.
- A field whose value the event does not carry (``None``: unknown) does NOT match (fail closed).
- Globs (``exe``, ``memfd_name``, ``parent_exe``, ``cgroup``): ``*`` and ``?`` do not cross ``/``;
  ``**`` does; ``[abc]`` / ``[!abc]`` are classes. The whole value must match.
- ``exe`` is matched against the image path in Tracee's form (``memfd:NAME`` for a memfd, the path
  without `` (deleted)`` otherwise), ``parent_exe`` against the parent's exe as the kernel resolved
  it (``ExecEvent.parent_exe``, never ``comm``).
- ``argv``: one regular expression, searched (``re.search``) in the arguments joined by single
  spaces; anchor it with ``^`` and ``$``. A truncated argv never matches.
- ``exe``, ``memfd_name``, ``argv`` and ``technique`` are chosen by whoever runs the exec; an entry
  pinned only on them is a bypass. Such an entry is refused unless ``spoofable: true`` says the
  operator accepts that (pin ``parent_exe``, ``sha256``, ``uid`` or ``cgroup`` instead).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Final

from auditwatch import trc105
from auditwatch.events import TECHNIQUES, ExecEvent, Technique

GLOB_FIELDS: Final = ("exe", "memfd_name", "parent_exe", "cgroup")
MATCH_FIELDS: Final = (*GLOB_FIELDS, "uid", "technique", "argv", "sha256")
# Fields whose value the exec'ing process chooses freely.
SPOOFABLE_FIELDS: Final = frozenset({"exe", "memfd_name", "argv", "technique"})
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

RUNTIME_DIRS: Final = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


@dataclass(frozen=True, slots=True)
class EntrySpec:
    """One allow-list entry as configured. Tuples hold alternatives (any one may match)."""

    name: str
    comment: str = ""
    exe: tuple[str, ...] = ()
    memfd_name: tuple[str, ...] = ()
    parent_exe: tuple[str, ...] = ()
    cgroup: tuple[str, ...] = ()
    uid: tuple[int, ...] = ()
    technique: tuple[Technique, ...] = ()
    argv: str | None = None
    sha256: tuple[str, ...] = ()
    spoofable: bool = False

    @property
    def match_fields(self) -> tuple[str, ...]:
        return tuple(f for f in MATCH_FIELDS if getattr(self, f) not in ((), None))


def _runtime_entry(runtime: str) -> EntrySpec:
    return EntrySpec(
        name=f"default-{runtime}",
        comment=(f"{runtime} re-executes itself from a memfd it names "
                 f"'{runtime}_cloned:/proc/self/exe'; the parent is the on-disk {runtime}"),
        exe=(f"memfd:{runtime}_cloned:/proc/self/exe",),
        parent_exe=tuple(f"{d}/{runtime}" for d in RUNTIME_DIRS),
        technique=("memfd",),
    )


DEFAULT_ENTRIES: Final[tuple[EntrySpec, ...]] = (_runtime_entry("runc"), _runtime_entry("crun"))


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Path-aware glob: ``*``/``?`` stay within one path component, ``**`` crosses ``/``."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith(("[!", "[]"), i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("!")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("^", "\\^")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def validate_spec(spec: EntrySpec) -> dict[str, str]:
    """Problems with one entry, by field name ("" for the entry as a whole). Pure."""
    problems: dict[str, str] = {}
    if not spec.name:
        problems["name"] = "must not be empty"
    present = spec.match_fields
    if not present:
        problems[""] = f"entry has no match field (one of {', '.join(MATCH_FIELDS)})"
    elif set(present) <= SPOOFABLE_FIELDS and not spec.spoofable:
        problems[""] = (f"entry matches only on {', '.join(present)}, which the exec'ing process "
                        "chooses: pin parent_exe, sha256, uid or cgroup too, or set "
                        "'spoofable: true' to accept the bypass")
    for t in spec.technique:
        if t not in TECHNIQUES:
            problems["technique"] = f"unknown technique {t!r} (one of {', '.join(TECHNIQUES)})"
    for h in spec.sha256:
        if not _SHA256.match(h):
            problems["sha256"] = f"not 64 lowercase hex digits: {h!r}"
    if spec.argv is not None:
        try:
            re.compile(spec.argv)
        except re.error as e:
            problems["argv"] = f"bad regular expression: {e}"
    for f in GLOB_FIELDS:
        if any(not g for g in getattr(spec, f)):
            problems[f] = "empty pattern"
    return problems


@dataclass(frozen=True, slots=True)
class Entry:
    """A compiled entry."""

    spec: EntrySpec
    globs: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]
    uids: frozenset[int]
    techniques: frozenset[str]
    argv: re.Pattern[str] | None
    sha256: frozenset[str]

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def compile(cls, spec: EntrySpec) -> Entry:
        problems = validate_spec(spec)
        if problems:
            where, what = next(iter(problems.items()))
            prefix = f"{where}: " if where else ""
            raise ValueError(f"allow-list entry {spec.name!r}: {prefix}{what}")
        return cls(
            spec=spec,
            globs=tuple((f, tuple(glob_to_regex(g) for g in getattr(spec, f)))
                        for f in GLOB_FIELDS if getattr(spec, f)),
            uids=frozenset(spec.uid),
            techniques=frozenset(spec.technique),
            argv=re.compile(spec.argv) if spec.argv is not None else None,
            sha256=frozenset(spec.sha256),
        )

    def matches_cheap(self, event: ExecEvent, technique: str) -> bool:
        """Every field except sha256."""
        if self.techniques and technique not in self.techniques:
            return False
        if self.uids and (event.uid is None or event.uid not in self.uids):
            return False
        for field, patterns in self.globs:
            value = _glob_value(event, field)
            if value is None or not any(p.match(value) for p in patterns):
                return False
        return self.argv is None or (not event.argv_truncated
                                     and self.argv.search(" ".join(event.argv)) is not None)


def _glob_value(event: ExecEvent, field: str) -> str | None:
    if field == "exe":
        return trc105.pathname(event) if event.exe or event.memfd_name is not None else None
    if field == "memfd_name":
        if event.memfd_name is not None:
            return event.memfd_name
        return trc105.memfd_name_of(event.exe)
    if field == "parent_exe":
        return event.parent_exe
    if field == "cgroup":
        return event.cgroup
    raise AssertionError(field)


class Allowlist:
    """Compiled entries plus a count of suppressions per entry name (the only state)."""

    __slots__ = ("_counts", "entries")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: tuple[Entry, ...] = tuple(entries)
        names = [e.name for e in self.entries]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate allow-list entry names: {', '.join(sorted(dup))}")
        self._counts: Counter[str] = Counter()

    @classmethod
    def from_config(cls, entries: Iterable[EntrySpec], include_defaults: bool = True) -> Allowlist:
        specs = (*DEFAULT_ENTRIES, *entries) if include_defaults else tuple(entries)
        return cls(Entry.compile(s) for s in specs)

    @property
    def needs_sha256(self) -> bool:
        return any(e.sha256 for e in self.entries)

    def match(self, event: ExecEvent, technique: str,
              sha256_of: Callable[[], str | None] = lambda: None) -> Entry | None:
        """The first entry that suppresses this finding, or ``None``. Counts the suppression.

        ``sha256_of`` is called at most once, and only for an entry whose other fields all matched.
        """
        digest: str | None = None
        asked = False
        for entry in self.entries:
            if not entry.matches_cheap(event, technique):
                continue
            if entry.sha256:
                if not asked:
                    asked = True
                    value = sha256_of()
                    digest = value.lower() if value is not None else None
                if digest is None or digest not in entry.sha256:
                    continue
            self._counts[entry.name] += 1
            return entry
        return None

    def suppressing_entry(self, event: ExecEvent, technique: str,
                          sha256_of: Callable[[], str | None]) -> str | None:
        """``match`` for the pipeline (``pipeline.Suppressor``): the entry's name, or None."""
        entry = self.match(event, technique, sha256_of)
        return entry.name if entry is not None else None

    def counters(self) -> dict[str, int]:
        """Suppressions per entry name, every entry listed (0 when it never matched)."""
        return {e.name: self._counts.get(e.name, 0) for e in self.entries}


def spec_fields() -> tuple[str, ...]:
    """Every key an entry may carry in the configuration."""
    return tuple(f.name for f in fields(EntrySpec))

"""Errors a definition author sees: each names the file, the definition and the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefinitionProblem:
    origin: str
    """The file the definition comes from."""
    definition: str
    """``kind 'name'``, or what is known of it when the definition could not be read."""
    field: str
    """Where in the definition, e.g. ``fields[2]`` or ``enrich[0].table``; empty for the whole."""
    message: str

    def __str__(self) -> str:
        where = f"{self.definition}, field '{self.field}'" if self.field else self.definition
        return f"{self.origin}: {where}: {self.message}"


class DefinitionError(Exception):
    """One or more definitions are wrong; ``problems`` lists every one found."""

    def __init__(self, problems: list[DefinitionProblem]) -> None:
        self.problems = problems
        count = len(problems)
        heading = "1 problem" if count == 1 else f"{count} problems"
        body = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid definitions ({heading}):\n{body}")

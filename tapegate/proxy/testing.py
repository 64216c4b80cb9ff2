"""Transcript tests for the sans-IO core: answers in, commands out (mitmproxy's Playbook).

    commands, outcome = transcript(admit(config, login, words), {VerifyToken: identity})

`answers` maps a command type to its answer (or to a callable taking the command). The result
is every command the steps asked for, in order, and what they came to.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any

Answer = Any | Callable[[Any], Any]


def transcript(
    steps: Generator[Any, Any, Any], answers: Mapping[type, Answer]
) -> tuple[list[Any], Any]:
    commands: list[Any] = []
    answer: Any = None
    try:
        while True:
            command = steps.send(answer)
            commands.append(command)
            if type(command) not in answers:
                raise AssertionError(f"the steps asked for {command!r}, which has no answer")
            given = answers[type(command)]
            answer = given(command) if callable(given) else given
    except StopIteration as done:
        return commands, done.value

"""Pass interface and the pass manager.

A pass is a small frozen dataclass whose fields are its options; ``run`` rewrites the graph in
place and returns whether anything changed. The manager runs ``requires → run → ensures →
verify`` for each pass and can dump the IR after every pass (``NN-<name>.txt``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from xbarc.errors import PassError, VerifyError, XbarcError
from xbarc.ir.core import Graph, Node
from xbarc.ir.printer import print_graph

Rule = Callable[[Graph, Node], bool]
"""A local rewrite: returns True if it changed the graph (the node may be gone)."""


class Pass(abc.ABC):
    """Base of every pass; subclasses are frozen dataclasses."""

    name: ClassVar[str] = "pass"

    def requires(self, g: Graph) -> None:  # noqa: B027 - optional hook
        """Raise if the graph is not in the form this pass expects."""

    @abc.abstractmethod
    def run(self, g: Graph) -> bool:
        """Rewrite ``g`` in place; return True if it changed."""

    def ensures(self, g: Graph) -> None:  # noqa: B027 - optional hook
        """Raise if the pass did not establish its postcondition."""


def apply_rules(g: Graph, rules: Sequence[Rule], *, limit: int = 100_000) -> bool:
    """Run local rewrite rules over every node until none applies (a worklist fixpoint)."""
    changed = False
    steps = 0
    progress = True
    while progress:
        progress = False
        for node in list(g.nodes):
            if node.graph is not g:
                continue
            for rule in rules:
                if rule(g, node):
                    progress = changed = True
                    steps += 1
                    if steps > limit:
                        raise VerifyError(f"rewrite rules did not converge after {limit} steps")
                    break
    return changed


@dataclass(frozen=True)
class PassResult:
    """The graph after the pipeline and whether any pass changed it."""

    graph: Graph
    modified: bool


@dataclass
class PassManager:
    """Runs passes in order with verification and optional IR dumps."""

    passes: Sequence[Pass]
    verify_each: bool = True
    dump_dir: Path | None = None
    on_pass: Callable[[Pass, int], None] | None = None
    """Progress hook, called before each pass with its index."""

    def __call__(self, g: Graph) -> PassResult:
        """Run every pass on ``g`` (in place) and return it."""
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-input.txt").write_text(print_graph(g))
        modified = False
        done: list[str] = []
        for i, p in enumerate(self.passes, start=1):
            if self.on_pass is not None:
                self.on_pass(p, i - 1)
            try:
                p.requires(g)
                modified |= p.run(g)
                p.ensures(g)
                if self.verify_each:
                    g.verify()
            except XbarcError as e:
                before = ", ".join(done) or "none"
                err = PassError(f"pass '{p.name}' failed (after {before}): {e}")
                excerpt = "\n".join(print_graph(g).splitlines()[:40])
                err.add_note(f"IR at failure (first 40 lines):\n{excerpt}")
                raise err from e
            done.append(p.name)
            if self.dump_dir is not None:
                (self.dump_dir / f"{i:02d}-{p.name}.txt").write_text(print_graph(g))
        return PassResult(g, modified)

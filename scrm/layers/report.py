"""What a layering pass reports (the full pass, an event-driven re-layer, or a preview that
writes nothing). The CLI and the benchmark print it; the scheduler logs it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PassReport:
    customers: int = 0  # customers evaluated
    changed: int = 0  # customers whose row changed (layer, rule, home store or tag bits)
    moved: int = 0  # customers whose layer changed (one layer_changes row each)
    # Where customers land: (layer, rule_id or None for the default layer) -> customers.
    by_layer_rule: Counter = field(default_factory=Counter)
    # Moves between layers: (from_layer or None for a first placement, to_layer) -> customers.
    moves: Counter = field(default_factory=Counter)
    groups_relayered: int = 0  # customer_groups.layer rows changed
    seconds: float = 0.0
    written: bool = True  # False for a preview

    def by_layer(self) -> Counter:
        out: Counter = Counter()
        for (layer, _rule), n in self.by_layer_rule.items():
            out[layer] += n
        return out

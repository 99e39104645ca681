"""Seeded synthetic patient cases that cover the whole vocabulary and every response category.

The codes come from the ontology (the same lists GET /vocabulary serves), so a case made
here is valid by construction. Pain scores are shaped so that each response category
occurs; which one a case falls into is decided by the rules, not here.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

SHAPES = ("pending", "primary", "responder", "provisional", "wore-off", "secondary", "late")


class CaseGenerator:
    def __init__(self, vocabulary: dict[str, list[dict[str, str]]], seed: int = 7) -> None:
        self.codes = {field: [entry["code"] for entry in entries] for field, entries in vocabulary.items()}
        self.random = random.Random(seed)

    def cases(self, n: int, prefix: str = "syn") -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield self.case(f"{prefix}-{i:06d}", SHAPES[i % len(SHAPES)])

    def _some(self, field: str, most: int) -> list[str]:
        options = self.codes.get(field, [])
        return self.random.sample(options, self.random.randint(0, min(most, len(options))))

    def case(self, case_id: str, shape: str) -> dict[str, Any]:
        r = self.random
        injected = dt.date(2025, 1, 1) + dt.timedelta(days=r.randint(0, 400))
        baseline = r.randint(5, 10)
        scores = [(0, baseline)]
        low = max(0, baseline // 3)  # relief well above 50 %
        if shape == "pending":
            scores.append((r.randint(1, 6), r.randint(low, baseline)))
        elif shape == "primary":
            scores += [(r.randint(7, 14), r.randint(baseline - 1, baseline)), (r.randint(15, 40), baseline)]
        elif shape == "responder":
            scores += [(r.randint(7, 14), low), (r.randint(28, 60), low)]
        elif shape == "provisional":
            scores.append((r.randint(7, 27), low))
        elif shape == "wore-off":
            scores += [(r.randint(28, 35), low), (r.randint(40, 60), baseline)]
        elif shape == "secondary":
            scores += [(r.randint(2, 6), low), (r.randint(8, 27), baseline)]
        else:  # late response
            scores += [(r.randint(7, 14), baseline), (r.randint(28, 60), low)]
        blocks = []
        for target in self._some("diagnostic_blocks.target", 2):
            blocks.append({"target": target, "date": (injected + dt.timedelta(days=r.randint(20, 60))).isoformat(),
                           "relief_percent": r.choice([30, 49, 50, 80, 90])})
        case = {
            "id": case_id,
            "age": r.randint(18, 120),
            "sex": r.choice(self.codes["sex"]),
            "pain_regions": self._some("pain_regions", 2) or [self.codes["pain_regions"][0]],
            "diagnoses": self._some("diagnoses", 2),
            "findings": self._some("findings", 2),
            "prior_spinal_surgery": r.random() < 0.2,
            "injection": {"date": injected.isoformat(), "approach": r.choice(self.codes["injection.approach"]),
                          "spinal_region": r.choice(self.codes["injection.spinal_region"])},
            "pain_scores": [{"date": (injected + dt.timedelta(days=d)).isoformat(), "score": s} for d, s in scores],
            "red_flags": self._some("red_flags", 1) if r.random() < 0.15 else [],
            "treatments_tried": self._some("treatments_tried", 3),
            "diagnostic_blocks": blocks,
        }
        return case

"""Schemathesis hooks for tests/test_fuzz.py (loaded with SCHEMATHESIS_HOOKS=tests.fuzz_hooks).

One check: where the document lists rules no schema can state (`x-inventoryd-rules`), the fuzz
allows their status for schema-valid requests, and this check makes sure every such refusal is one
of those rules (its problem's `field` is the rule's), so the allowance hides nothing else.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis


def rule_matches(rule_field: str, field: Any) -> bool:
    """`$.ticket_types[*].code` matches `$.ticket_types[3].code`."""
    if not isinstance(field, str):
        return False
    pattern = re.escape(rule_field).replace(re.escape("[*]"), r"\[\d+\]")
    return re.fullmatch(pattern, field) is not None


@schemathesis.check
def refusals_of_valid_data_follow_documented_rules(ctx: Any, response: Any, case: Any) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    rules = case.operation.definition.raw.get("x-inventoryd-rules", [])
    relevant = [rule for rule in rules if rule["status"] == response.status_code]
    if not relevant:
        return None  # other statuses: positive_data_acceptance judges them
    try:
        field = response.json().get("field")
    except ValueError:
        field = None
    if not any(rule_matches(rule["field"], field) for rule in relevant):
        raise AssertionError(
            f"schema-valid data refused with {response.status_code}, and not by a documented rule"
            f" ({', '.join(rule['field'] for rule in relevant)}): {response.text[:500]}"
        )
    return None

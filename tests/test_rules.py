"""The per-step scalars contract: every host rule returns its namedtuple, every element rule unpacks
``h`` by exactly those names in that order, and every spec names rules that exist."""
import ast
import inspect

import pytest

from fastlr import specs
from fastlr.engine import plan_scalars
from fastlr.kernels import rules


def _unpacked_names(fn):
    """The targets of the rule's ``a, b, ... = h`` statement."""
    for node in ast.walk(ast.parse(inspect.getsource(fn))):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "h":
            return tuple(t.id for t in node.targets[0].elts)
    return None


@pytest.mark.parametrize("rule", list(rules.RULE_SCALARS))
def test_element_rule_unpacks_its_contract(rule):
    contract = rules.RULE_SCALARS[rule]
    assert _unpacked_names(getattr(rules, rule)) == contract._fields


@pytest.mark.parametrize("name", list(specs.SPECS))
def test_host_rule_returns_the_contract_of_the_chosen_rule(name):
    spec = specs.SPECS[name]
    for case in spec.test_cases():
        group = {**spec.constants, **spec.defaults, **case}
        rule = spec.rule(group)
        assert rule in rules.ELEMENT_RULES
        for step in (1, 2, 10):
            pstate = {"step": step, **spec.scalar_state}
            raw = plan_scalars(spec, group, pstate)[1]   # sets this step's scalar states in pstate
            assert len(raw) == len(rules.ELEMENT_RULES[rule]._fields)
        args = {n: (pstate[n] if n in pstate else group[n] if n in group else spec.constants[n])
                for n in inspect.signature(getattr(rules, spec.scalars)).parameters}
        assert isinstance(getattr(rules, spec.scalars)(**args), rules.ELEMENT_RULES[rule])


def test_every_element_rule_is_used_by_some_spec():
    used = {specs.SPECS[n].rule({**s.constants, **s.defaults, **case})
            for n, s in specs.SPECS.items() for case in s.test_cases()}
    assert used == set(rules.ELEMENT_RULES)

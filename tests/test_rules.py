"""The per-step scalars contract: every host rule returns its namedtuple, every element rule unpacks
``h`` by exactly those names in that order, and every spec names rules that exist."""
import ast
import inspect

import pytest

from fastlr import specs
from fastlr.engine import bind, plan_scalars
from fastlr.kernels import rules


def _unpacked_names(tree):
    """The targets of the rule's ``a, b, ... = h`` statement, or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "h":
            return tuple(t.id for t in node.targets[0].elts)
    return None


def _uses_of_h(tree):
    """(rules it hands h to, constant indices it reads h at, whether it uses h in any other way)."""
    callees, indices, other = set(), set(), False
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "h" and isinstance(node.ctx, ast.Load):
            up = parents[node]
            if isinstance(up, ast.Call) and isinstance(up.func, ast.Name) and node in up.args:
                callees.add(up.func.id)
            elif isinstance(up, ast.Subscript) and isinstance(up.slice, ast.Constant):
                indices.add(up.slice.value)
            elif not isinstance(up, ast.arg):
                other = True
    return callees, indices, other


@pytest.mark.parametrize("rule", list(rules.RULE_SCALARS))
def test_element_rule_unpacks_its_contract(rule):
    """Each rule unpacks h by its contract's names, or hands h on to a rule of the same contract, or reads
    it only at positions the contract has."""
    contract = rules.RULE_SCALARS[rule]
    tree = ast.parse(inspect.getsource(getattr(rules, rule)))
    names = _unpacked_names(tree)
    if names is not None:
        assert names == contract._fields
        return
    callees, indices, other = _uses_of_h(tree)
    assert not other, f"rules.{rule} uses h other than by unpacking, indexing or passing it on"
    for callee in callees:
        if callee in rules.RULE_SCALARS:
            assert rules.RULE_SCALARS[callee] is contract, (rule, callee)
    assert all(0 <= i < len(contract._fields) for i in indices)


@pytest.mark.parametrize("name", list(specs.SPECS))
def test_host_rule_returns_the_contract_of_the_chosen_rule(name):
    spec = specs.SPECS[name]
    for case in spec.test_cases():
        group = {**spec.constants, **spec.defaults, **case}
        group.update(spec.group_defaults(group))
        for name, fn in spec.group_updates.items():   # this step's group values, as the engine advances them
            group[name] = bind(fn, spec, group, {})
        group.update({"group_" + n: group[n] for n in spec.group_state})   # as the engine binds group state
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
    # and the rules that are the first pass of a two-pass rule, or the schedule-free train()/eval() switch
    used |= {sums for rule in used if rule in rules.PASSES for sums, _, _ in rules.PASSES[rule]}
    used |= {"schedulefree_lerp"} if any(s.modes == "schedulefree" for s in specs.SPECS.values()) else set()
    assert used >= set(rules.ELEMENT_RULES), set(rules.ELEMENT_RULES) - used

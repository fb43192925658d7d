"""Compile the rules of rules.py for one target, and write one kernel per element rule.

Kernels are generated from a template rather than written out by hand (the loop is the
same for every rule; only the number of state arrays differs). They are compiled from
source attributed to the target's own module file, at module level, so numba's
``cache=True`` stores and reloads them (factory closures are never reused from cache).
"""
import hashlib
import inspect
import types

from . import rules

# numba's cache only watches the kernel's own file: naming each generated kernel after the
# rules' source makes an edit of rules.py compile fresh kernels instead of reusing stale ones.
RULES_HASH = hashlib.sha1(inspect.getsource(rules).encode()).hexdigest()[:10]


def compile_rules(decorate, module_name):
    """A module holding every function of rules.py compiled with `decorate`.

    Each function is re-created over a private globals dict in which its callees are the
    compiled versions, so the CPU and CUDA targets each get their own complete set.
    """
    namespace = dict(vars(rules))
    compiled = types.ModuleType(module_name)
    for name, fn in vars(rules).items():
        if isinstance(fn, types.FunctionType) and fn.__module__ == rules.__name__:
            copy = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__)
            namespace[name] = decorate(copy)
            setattr(compiled, name, namespace[name])
    return compiled


def n_states(rule_name):
    """Number of state arrays of an element rule: its arguments less p, g and h."""
    return len(inspect.signature(getattr(rules, rule_name)).parameters) - 3


def generate(template, rule_name, kernel_name, module_globals, decorate):
    """Render `template` for one rule, compile it as code of the calling module, decorate it."""
    k = n_states(rule_name)
    kernel_name = f"{kernel_name}_{RULES_HASH}"
    fields = dict(
        name=kernel_name, rule=rule_name,
        states="".join(f"s{j}, " for j in range(k)),
        targets="".join(f" s{j}[i]," for j in range(k)),
        items="".join(f", s{j}[i]" for j in range(k)),
    )
    namespace = dict(module_globals)
    code = compile(template.format(**fields), module_globals["__file__"], "exec")
    exec(code, namespace)
    return decorate(namespace[kernel_name])

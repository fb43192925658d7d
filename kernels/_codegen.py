"""Compile the rules of rules.py for one target, and write one kernel per element rule.

Kernels are generated from a template rather than written out by hand (the loop is the
same for every rule; only the number of state arrays differs). They are compiled from
source attributed to the target's own module file, at module level, so numba's
``cache=True`` stores and reloads them (factory closures are never reused from cache).
"""
import functools
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


@functools.cache
def arg_names(fn_name):
    """The argument names of rules.<fn_name>, in order (optimizers bind host rules by name)."""
    return tuple(inspect.signature(getattr(rules, fn_name)).parameters)


def n_states(rule_name):
    """Number of state arrays of an element rule: its arguments less p, g and h."""
    return len(arg_names(rule_name)) - 3


def scalar_names(rule_name):
    """The per-step scalars an element rule takes, in order: the fields of its contract in rules.py."""
    return rules.RULE_SCALARS[rule_name]._fields


def generate(template, rule_name, kernel_name, module_globals, decorate):
    """Render `template` for one rule, compile it as code of the calling module, decorate it.

    Fields: name, rule, states ("s0, s1, "), targets (" s0[i], s1[i],"), items (", s0[i], s1[i]")
    h_items ("hd[0], hd[1], ...": the rule's scalars read from a device array hd) and h_cast
    ("p.dtype.type(h64[0]), ...": float64 scalars cast to the params' dtype once per call).
    """
    k = n_states(rule_name)
    fields = dict(
        rule=rule_name,
        states="".join(f"s{j}, " for j in range(k)),
        targets="".join(f" s{j}[i]," for j in range(k)),
        items="".join(f", s{j}[i]" for j in range(k)),
        h_items="".join(f"hd[{j}], " for j in range(len(scalar_names(rule_name)))),
        h_cast="".join(f"p.dtype.type(h64[{j}]), " for j in range(len(scalar_names(rule_name)))),
    )
    return generate_source(template, kernel_name, module_globals, decorate, **fields)


def generate_source(template, kernel_name, module_globals, decorate, **fields):
    """Compile `template` (a function named {name}) as code of the calling module and decorate it.

    The name gets the rules' hash (see RULES_HASH) so numba's cache never serves a stale kernel.
    """
    kernel_name = f"{kernel_name}_{RULES_HASH}"
    namespace = dict(module_globals)
    code = compile(template.format(name=kernel_name, **fields), module_globals["__file__"], "exec")
    exec(code, namespace)
    return decorate(namespace[kernel_name])

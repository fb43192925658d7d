"""The reference implementations of the algorithms beyond torch.optim's classic ten, constructed by name:
torch.optim (ASGD, Rprop, ...), timm.optim 1.0.31 (Adan, Adopt, Lamb, Lars, Mars), schedulefree 1.4.1.

timm's package __init__ imports torchvision, whose PyPI wheels are built against CUDA torch and do not
load next to the CPU torch of the test venv; its optimizer modules need only torch, so they are imported
under an empty ``timm`` / ``timm.optim`` package (the modules' own code runs unchanged).
"""
import importlib
import importlib.util
import sys
import types

import pytest

TIMM = {"Adan": "adan", "Adopt": "adopt", "Lamb": "lamb", "Lars": "lars", "Mars": "mars"}
SCHEDULEFREE = ("SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree")


def timm_class(name):
    """timm.optim.<name> without importing timm (and torchvision)."""
    if "timm.optim" not in sys.modules:
        spec = importlib.util.find_spec("timm")
        if spec is None:
            pytest.skip("timm is not installed (pip install -e .[test])")
        root = spec.submodule_search_locations[0]
        for pkg, path in (("timm", root), ("timm.optim", root + "/optim")):
            module = types.ModuleType(pkg)
            module.__path__ = [path]
            sys.modules[pkg] = module
    return getattr(importlib.import_module(f"timm.optim.{TIMM[name]}"), name)


def reference_class(name):
    if name in TIMM:
        return timm_class(name)
    if name in SCHEDULEFREE:
        return getattr(pytest.importorskip("schedulefree"), name)
    import torch
    return getattr(torch.optim, name)


def has_reference(name):
    import torch
    return name in TIMM or name in SCHEDULEFREE or hasattr(torch.optim, name)


def reference_optimizer(name, params, **hp):
    """The reference optimizer, its single-tensor code path, in train mode (schedule-free)."""
    opt = reference_class(name)(params, foreach=False, **hp) if name not in ("Mars",) else \
        reference_class(name)(params, **hp)
    if hasattr(opt, "train"):
        opt.train()
    return opt

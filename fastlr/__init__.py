"""fastlr: adaptive-learning-rate optimizer update rules, written once, compiled for CPU and GPU.

    import numpy as np, fastlr
    w = np.zeros(1_000_000, np.float32)
    opt = fastlr.Adam(w, lr=1e-3)
    opt.step(grad)            # w and the optimizer state are updated in place

Importing fastlr imports neither torch nor cupy and compiles nothing; the PyTorch
back-end is ``import fastlr.torch``.
"""
from . import functional, schedules
from .lr_find import LRFindResult, lr_find
from .optim import (
    ASGD,
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    AdamWScheduleFree,
    Adan,
    Adopt,
    Lamb,
    Lars,
    Lion,
    Mars,
    Muon,
    NAdam,
    Optimizer,
    RAdam,
    RAdamScheduleFree,
    RMSprop,
    Rprop,
    SGDScheduleFree,
)
from .pack import pack, pack_like
from .schedules import ReduceLROnPlateau
from .sparse import RowWiseAdagrad
from .warmup import warmup

__version__ = "0.1.0"

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam",
           "RAdam", "Lion", "ASGD", "Rprop", "Adopt", "Adan", "SGDScheduleFree", "AdamWScheduleFree",
           "RAdamScheduleFree", "Lamb", "Lars", "Mars", "Muon", "Adafactor",
           "RowWiseAdagrad", "functional", "schedules", "pack", "pack_like", "warmup",
           "ReduceLROnPlateau", "lr_find", "LRFindResult"]

"""fastlr.kernels: the update rules (rules.py) and their CPU (cpu.py) and CUDA (cuda.py) compilations.

Importing this package compiles nothing and imports numba only when cpu or cuda is imported.
"""

"""Triton kernels and their launchers, one file per op family. No autograd and no argument checks here:
ops.py validates arguments and wires these launchers into autograd."""

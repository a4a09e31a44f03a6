"""Triton kernels, installed as mage_fast.kernels (one module per op)."""

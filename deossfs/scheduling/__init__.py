"""Choosing storage nodes: preferred clusters first, then near and healthy ones."""

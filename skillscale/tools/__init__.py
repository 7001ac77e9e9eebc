"""Operator tools: the command line, the ``up`` supervisor, the benchmark."""

"""Sweeps on the bus: the queue of trials, the agents that run them, the coordinator that fills
the queue and follows the trials, and the state a progress line or a web page shows.

Pruning is no part of this package: a `pruner` worker follows a sweep's trials and votes on
them like any voter (DESIGN.md section 11).
"""

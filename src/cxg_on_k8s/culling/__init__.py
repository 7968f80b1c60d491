"""Culling: the decision (a pure function of instance, activity and clock), where activity comes
from, and the loop that applies decisions at a bounded rate."""

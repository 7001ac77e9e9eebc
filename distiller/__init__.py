"""The distillation worker: agent sessions in, measured skills out.

Pipeline (each stage its own module): :mod:`.ingest` reads the agents'
native session stores incrementally into one :class:`.model.Trajectory`
model (redacted at the boundary); :mod:`.atoms` cuts trajectories into
single-intent atoms; :mod:`.cluster` groups recurring atoms and routes new
ones to existing skills; :mod:`.writer` renders SKILL.md with provenance and
commits it through :mod:`skillscale.core.skill_history`. :mod:`.pipeline`
runs one pass (``skillscale distill --once``); :mod:`.role` is the
long-lived role; :mod:`.bench` is DistillBench.
"""

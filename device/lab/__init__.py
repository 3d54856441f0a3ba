"""The lab: the demo and its generated entrance clip, the presentation-attack renderer, the benchmarks and
the local dev broker. Bench and demo machines only; nothing here runs on the unit.

May import every room below the commands (core, models, vision, identity, events, evaluation, runtime,
consumers); no other room imports the lab.
"""

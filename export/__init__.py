"""palm-cohash workstation side: data sets, PalmCohashNet, training, evaluation, export.

May import shared contracts from ``agent`` (codes, preprocessing, bundle manifest); never the
other way round.
"""

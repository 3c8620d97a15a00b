"""One module per paper figure: its settings per preset, the runs it needs, its summary tables
and its claims (with named thresholds, intervals and three-way verdicts).

- :mod:`paperlib.figures.fig1` — Fig 1 and App. F.3: SGD vs NGD (eq. 3) vs GD;
- :mod:`paperlib.figures.fig3` — Fig 3 and App. F: where the LSR fails (Thm 5.6);
- :mod:`paperlib.figures.fig4` — Fig 4 and App. F: SVAG (eq. 5) converges;
- :mod:`paperlib.figures.sampling` — App. F: sampling schemes.

Each module has ``configs(preset, ...)`` (the RunConfigs), ``run(preset, ...)`` (→ the tidy
frame of :func:`paperlib.sweeps.sweep` and the results) and ``claims(df, ...)``. Optional
settings take ``None`` for "the preset's value".
"""

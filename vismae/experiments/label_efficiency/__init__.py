"""Label-efficiency sweeps: fractions x inits x seeds (x folds) of finetuning runs, and their
report (see sweep.py and report.py)."""

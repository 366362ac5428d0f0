"""simcal.infer: reattach calibrated heads, dual-head / post-hoc scoring, results json."""

"""simcal.evaluate: LVIS-protocol AP, the paper's AP1-AP4 bins, tables and plots."""

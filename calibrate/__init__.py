"""simcal.calibrate: cache reader, samplers, heads, losses and the head trainer."""

"""simcal.extract: frozen detector -> per-proposal feature cache (zarr, h5py export)."""

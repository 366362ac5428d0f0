"""simcal.core: what every stage shares, importable without torch.

- :mod:`~simcal.core.errors`: :class:`InputError`, the one exception for bad user input;
- :mod:`~simcal.core.atomic`: the one atomic writer (bytes, text, json, torch, png);
- :mod:`~simcal.core.jsonio`: the one json reader (every failure is an ``InputError``);
- :mod:`~simcal.core.manifest`: the one rule for "this output is complete and was made
  from the same inputs";
- :mod:`~simcal.core.names`: the names of archs, heads, samplers, losses, modes, post-hoc
  rules, preload policies and bin schemes, shared by the CLIs and the implementations;
- :mod:`~simcal.core.cli_args`: the flags several commands share, spelt once;
- :mod:`~simcal.core.device`: ``--device auto|cpu|cuda`` -> a device;
- :mod:`~simcal.core.formatting`: percentages as every table prints them.

Stages import this package; it imports no stage (docs/design.md §2).
"""

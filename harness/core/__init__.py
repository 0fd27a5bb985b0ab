"""The ground floor every other layer stands on: configuration and presets, run ids, run folders
(the one reader of a run's files), checkpoints, atomic writes, one-line user errors, device and
autocast helpers. Imports only `variants` and `kernels` below it."""

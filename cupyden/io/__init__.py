"""Files and arrays: MRC I/O, pair sources, patches, the HDF5 patch store, the loader,
checkpoints. Knows nothing of models or layers."""

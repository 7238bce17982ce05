"""fusionpipe stage 1: frozen backbones over a folder of images, cached in one HDF5 store."""

"""Images: names, manifests and configs, and moving them in and out of the store.

An image is a config blob (its digest is the image id) naming layers by their
DiffIDs; the store keeps each layer once, under its ChainID, whatever image
brought it. Registries (:mod:`.registry`) and archives are sources and targets.
"""

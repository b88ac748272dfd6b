"""lamina's core: the driver contract, the stores, and everything built on them.

One package per step of the data path, each importing only from the steps below it:
blobs (:mod:`.blobs`) -> layer tars read, applied and exported (:mod:`.layertar`) ->
layers in the store (:mod:`.layers`, the contract in :mod:`.driver`) -> images
(:mod:`.images`) -> containers (:mod:`.containers`, with :mod:`.network`) -> the
launcher (:mod:`.launcher`) -> builds (:mod:`.build`); :mod:`.host` wraps the host
beneath them all, :mod:`.plugins` finds the drivers, :mod:`.engine` wires them to a
store, and :mod:`.cli` is the command line.
"""

__version__ = "0.1.0"

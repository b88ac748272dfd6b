"""lamina's core: the driver contract, the layer store, safe apply and export.

The data path, each step a module: blob (:mod:`.blobs`) -> layer tar stream
(:mod:`.compression`, :mod:`.tarstream`) -> applied into a driver's layer
(:mod:`.apply`, :mod:`.driver`) -> recorded in the store (:mod:`.store`,
:mod:`.metadata`) -> compared and exported again (:mod:`.changes`,
:mod:`.export`).
"""

__version__ = "0.1.0"

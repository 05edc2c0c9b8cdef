"""Values on the wire: the :class:`~rlmesh.wire.tensor.Tensor`, the codec, space specs.

The lowest room: nothing here imports any other part of rlmesh but :mod:`rlmesh.errors`.
NumPy is needed only by :mod:`~rlmesh.wire.arrays`.
"""

"""mcast: a multicast-first package download engine.

One UDP multicast stream serves every machine on a subnet that needs a package; losses are
repaired by NAK with Reed-Solomon parity; every block is verified against an Ed25519-signed
snapshot; what multicast cannot deliver comes by HTTP. See shared DESIGN.md for the layers.
"""

__version__ = "0.1.0"

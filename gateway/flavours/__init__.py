"""Client flavours: pure codecs, one per client family (the contract is in `base.py`)."""

from gateway.flavours.base import Encoder as Encoder
from gateway.flavours.base import Flavour as Flavour

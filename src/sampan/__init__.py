"""sampan: one integration platform instead of point-to-point wiring."""

__version__ = "0.1.0"

"""Phantoms: analytic ellipse/ellipsoid phantoms with exact line integrals."""

from .ellipsoids import Ellipsoid, EllipsoidPhantom, random_ellipsoids, shepp_logan

__all__ = ["Ellipsoid", "EllipsoidPhantom", "shepp_logan", "random_ellipsoids"]

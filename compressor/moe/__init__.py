"""Mixture-of-experts helpers: the routing rule (training, calibration, KA/SAR teachers) and knowledge gathering
(ALGORITHMS §5)."""

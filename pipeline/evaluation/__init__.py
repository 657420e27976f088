"""Evaluation: IS/FID/KID/precision-recall through torch-fidelity (`scorer`) on the features of a resolved extractor
(`resolve`, `extractors`, the in-domain `classifier`), and the evaluate stage (`stage`). The only package that
imports torch-fidelity.
"""

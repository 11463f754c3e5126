"""Datasets and annotation files."""

"""Renderers: text and JSON made from the typed results (explanations, findings, reports)."""

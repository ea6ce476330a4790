"""Renderers: they take plain dicts (an explanation's to_dict) and return text."""

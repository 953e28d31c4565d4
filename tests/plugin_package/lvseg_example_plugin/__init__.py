"""A tiny model family outside lvseg: its own image tower (tower.py) and one model file (model.py)."""

"""Broken on purpose: the stage must name each of these plugins at start-up and serve its other nodes."""

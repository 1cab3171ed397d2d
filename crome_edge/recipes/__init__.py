"""Recipes that produced shipped artifacts (the smol vision weights, the line3 adapter); rerun to reproduce."""

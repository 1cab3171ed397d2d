"""Package data: the smol vision side and the line3 demo adapter (see crome_edge/recipes/README.md)."""

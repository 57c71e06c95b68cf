"""Code edgel2 carries from other projects, unchanged: see README.md in this folder."""

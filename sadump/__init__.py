"""sadump: a model of the s390 external dump trigger, run on memory images."""

__version__ = "0.1.0"

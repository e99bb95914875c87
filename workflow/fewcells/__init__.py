"""fewcells: how many annotated single-cell images does a leukocyte classifier need?"""

__version__ = "0.1.0"

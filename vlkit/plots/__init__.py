"""Pure plotting functions (data in, Figure out), one file per notebook topic."""

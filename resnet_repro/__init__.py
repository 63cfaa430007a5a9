"""Plain vs residual networks of He et al. (2015), reproduced."""

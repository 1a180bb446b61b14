"""Paper reproductions at CPU scale (SigLiT batch-size sweep, init and noise studies)."""

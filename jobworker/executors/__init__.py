"""Where jobs run: this machine (local) or a Slurm cluster (slurm)."""

"""The Slurm executor: batch jobs through Slurm's commands."""

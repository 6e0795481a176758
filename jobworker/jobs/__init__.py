"""Jobs: records, the manager and its store, output, the executor seam."""

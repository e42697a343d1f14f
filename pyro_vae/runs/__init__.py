"""Run folders: configuration, training into a folder, resuming, loading, evaluating, comparing, drawing."""

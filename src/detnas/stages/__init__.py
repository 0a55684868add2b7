"""The stages that drive runs: training jobs and loop, search, retraining, rank check, pipeline, dry run, report and demo."""

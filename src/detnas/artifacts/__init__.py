"""What a run leaves behind and how it is used: reading weights back, export, inference and prediction."""

"""Training: everything train.py needs besides the model and the data."""

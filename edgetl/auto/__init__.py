"""`edgetl auto`: choose the model and fine-tuning strategy for the data and the deployment target."""

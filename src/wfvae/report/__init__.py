"""Self-contained HTML reports of training and evaluation runs (``wfvae report``)."""

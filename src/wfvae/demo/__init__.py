"""The ``wfvae demo`` pieces: a small built-in dataset of realistic clips (:mod:`wfvae.demo.dataset`)."""

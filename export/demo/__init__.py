"""The end-to-end demo: synthetic data -> training -> bundle -> the daemon on a private broker."""

"""The cryostack command line."""

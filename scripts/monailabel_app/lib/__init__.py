"""Code of the MONAI Label app that serves the repository's bundles (imported by ``main.py`` as ``lib``)."""

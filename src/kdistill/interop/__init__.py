"""Other tools' command lines and files, read as kdistill configs (torch-free).

``interop.distiller`` reads Intel Distiller's ``compress_classifier.py`` flags and YAML
compression schedules. Nothing here imports torch: what a translation names (models, layers,
files) is resolved when the run is assembled, or by ``kdistill distiller --dry-run``.
"""

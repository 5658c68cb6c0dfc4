"""A task's data: records read from its split files, the loaded task, and why a file could not be read.

Modules: :mod:`~sde_search.data.records`, :mod:`~sde_search.data.task`, :mod:`~sde_search.data.files`.

Pure core: never imports torch, Ray or MLflow, and nothing from :mod:`sde_search.config` when it runs (the config
package imports these modules to load a task).
"""

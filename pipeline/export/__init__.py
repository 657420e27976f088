"""Export: the generator's files (`formats`), the MLflow pyfunc that serves them (`pyfunc_model`, which imports
nothing of this project, so a logged model loads anywhere), and the export stage (`stage`).
"""

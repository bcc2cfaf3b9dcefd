"""The customized model outside this project: exported towers (:mod:`.export`), the MLflow model that serves them
(:mod:`.clip_pyfunc`, its code; :mod:`.mlflow_model`, how it is logged)."""

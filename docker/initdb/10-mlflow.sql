-- The MLflow tracking server keeps its runs in their own database on the same server.
CREATE DATABASE mlflow OWNER hpsearch;

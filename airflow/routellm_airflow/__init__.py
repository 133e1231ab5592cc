"""Airflow glue for routellm-batch: the nightly DAG's tasks, the deferrable batch trigger, the Spark operator.

Lives in its own virtual environment with Airflow (see the README); imports only the light parts of
routellm_batch (config, providers, ledger, stages that need no Spark), never pyspark or torch.
"""

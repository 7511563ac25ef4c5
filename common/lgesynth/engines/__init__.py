"""ignite engines and handlers that the bundle configs wire up where MONAI has none.

    base         BundleEngine (``run_all()``: the whole run a config asks for), StepTrainer
    inr_fit      InrFitTrainer: fits a datalist's INR bank, one chunk of subjects per iteration
    checkpoints  resuming a killed run from its newest epoch checkpoint (every train.yaml)
    tracking     RunInfoHandler: params and tags onto the MLflow run that ``--tracking mlflow`` opens
"""

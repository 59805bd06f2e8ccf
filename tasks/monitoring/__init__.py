"""Drift monitoring of the served model: is what the service sees still what it was trained on?

`drift` holds the tests (numpy and scipy only), `reference` what training data looked like to the
champion, `served` what the prediction log says the service saw, `report` the JSON and the plot,
and `run` the command the Prefect flow `flows/monitor.py` starts (``python -m
tasks.monitoring.run``), so the flow itself never imports torch.
"""

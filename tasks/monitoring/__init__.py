"""Drift monitoring of the served model: is what the service sees still what the champion knew?

`drift` holds the tests and the one family-wise verdict (numpy and scipy; `mmd` its kernel
test), `reference` what the champion's held-out test images looked like to it, `served` what the
prediction log says the service saw, `state` the count of drift verdicts in a row that starts
continual learning, `report` the JSON and the plot, and `run` the command the Prefect flow
`flows/monitor.py` starts (``python -m tasks.monitoring.run``), so the flow itself never
imports torch.
"""

"""The HTML report: every stage's JSON, CSV and PNG reports gathered into one offline page.

Torch-free on purpose: the report stage only reads what the other stages wrote, so it runs in a
second and can be rebuilt on any machine that holds the reports.
"""

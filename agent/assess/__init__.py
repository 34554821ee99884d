"""Configuration assessment (GB/T 22239-2019 level 3, 安全计算环境) and host inventory.

A policy is a YAML file of checks; each check names the L3-CES1 items it
evidences and a condition over typed probes of the host (or of a mounted
root file system). Every result is pass, fail or not applicable, with the
evidence that decided it.
"""
